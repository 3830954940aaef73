"""A deterministic template corpus for the bundled demo model (English, Mandarin, zh->en, chat).

The demo model is tiny (2-3 M parameters, ~20 minutes of CPU training), so the vocabulary is
kept small and closed; every sentence is built from these parts:

- numbers 0-99: English words ("twenty one"), Chinese numerals (二十一; 两 before a measure
  word: 两个, 两块钱, 两点); English ordinals first..thirty first for dates
- days of the week, "today / tomorrow / yesterday", months January-December, dates
  ("may twelfth" / 五月十二号)
- times: hours 1-12, "half past", minutes in fives, morning / afternoon / evening
- weather: hot, cold, warm, cool, sunny, cloudy, windy, rain, snow, temperatures in degrees
- directions: left, right, in front, behind, north, south, east, west, straight, meters,
  kilometers, crossings; places: bank, hospital, school, station, hotel, shop, park, airport,
  library, restaurant, market, toilet
- colours: red, blue, green, yellow, black, white, orange, purple, pink, grey, brown
- shopping: apple, orange, pear, egg, cup, bag, hat, watermelon, banana, cake, box, bread;
  prices in yuan (Mandarin pairs) and dollars (English only)
- greetings and simple questions (hello, thank you, what time is it, where is the ...)
- chat: arithmetic (plus / minus 0-20, times 1-9), the day / month / number after or before,
  opposites, colour mixing, counting facts, small talk; follow-ups that depend on the first
  answer ("and plus two", "what about the day after that", "and the opposite of that")

Conventions: English is lower case with no punctuation ("oclock" is avoided, never spelt);
Mandarin has no spaces and no punctuation. Chat answers are short lower-case English text.

Held-out sentences never occur in training: each utterance belongs to a split by a stable hash
of its English sentence (the text for English, the translation for Mandarin pairs, so 谢谢 and
谢谢你 -> "thank you" fall together and no held-out sentence is ever a training target either),
and for chat by its dialogue's first question. Short chat follow-ups ("and plus two") are
shared by both splits; only their context differs. Each chat fact is asked in several
phrasings, so a held-out question is a new sentence about a fact that training covers.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from mooer.errors import ConfigError, check_number

TASKS = ("asr", "ast", "mtl", "chat")

# Share of each kind of utterance in both splits: (task, spoken language) -> fraction.
TASK_MIX: dict[tuple[str, str], float] = {
    ("asr", "en"): 0.30,
    ("asr", "zh"): 0.25,
    ("ast", "zh"): 0.15,
    ("mtl", "zh"): 0.10,
    ("chat", "en"): 0.20,
}
HELDOUT_PER_MILLE = 100  # ~10 % of distinct sentences are reserved for the held-out split

Dialogue = tuple[tuple[str, str], ...]  # (question, answer) turns, in order


@dataclass
class Utterance:
    """One training or evaluation example: what is spoken and what the LLM should answer."""

    id: str
    lang: str  # spoken language: "en" | "zh"
    text: str  # what is spoken
    translation: str  # English translation of Mandarin text, "" for English
    task: str  # "asr" | "ast" | "mtl" | "chat"
    target: str  # asr: text; ast: translation; mtl: "text\ntranslation"; chat: the answer
    history: list[tuple[str, str]] = field(default_factory=list)  # chat: prior (q, a) turns
    # sentences spoken one after another, with pauses (``text`` joins them); empty: one sentence
    parts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_ORDINAL_ONES = (
    "_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"
).split()
_ZH_DIGITS = "零一二三四五六七八九"

DAYS = (
    ("星期一", "monday"),
    ("星期二", "tuesday"),
    ("星期三", "wednesday"),
    ("星期四", "thursday"),
    ("星期五", "friday"),
    ("星期六", "saturday"),
    ("星期天", "sunday"),
)
MONTHS_EN = (
    "january february march april may june july august september october november december"
).split()
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
PERIODS = (("上午", "morning"), ("下午", "afternoon"), ("晚上", "evening"))
MINUTES = (10, 15, 20, 25, 35, 40, 45, 50)
WEATHER = (
    ("很热", "hot"),
    ("很冷", "cold"),
    ("很暖和", "warm"),
    ("很凉快", "cool"),
    ("是晴天", "sunny"),
    ("是阴天", "cloudy"),
    ("有风", "windy"),
)
PRECIPITATION = (("下雨", "rain"), ("下雪", "snow"))
PLACES = (
    ("银行", "bank"),
    ("医院", "hospital"),
    ("学校", "school"),
    ("车站", "station"),
    ("酒店", "hotel"),
    ("商店", "shop"),
    ("公园", "park"),
    ("机场", "airport"),
    ("图书馆", "library"),
    ("饭馆", "restaurant"),
    ("市场", "market"),
    ("厕所", "toilet"),
)
SIDES = (
    ("左边", "on the left"),
    ("右边", "on the right"),
    ("前面", "in front"),
    ("后面", "behind"),
)
COMPASS = (("东", "east"), ("南", "south"), ("西", "west"), ("北", "north"))
TURNS = (("左", "left"), ("右", "right"))
COLOURS = (
    ("红色", "red"),
    ("蓝色", "blue"),
    ("绿色", "green"),
    ("黄色", "yellow"),
    ("黑色", "black"),
    ("白色", "white"),
    ("橙色", "orange"),
    ("紫色", "purple"),
    ("粉色", "pink"),
    ("灰色", "grey"),
    ("棕色", "brown"),
)
ITEMS = (  # (Chinese, singular, plural); all counted with 个
    ("苹果", "apple", "apples"),
    ("橙子", "orange", "oranges"),
    ("梨", "pear", "pears"),
    ("鸡蛋", "egg", "eggs"),
    ("杯子", "cup", "cups"),
    ("包", "bag", "bags"),
    ("帽子", "hat", "hats"),
    ("西瓜", "watermelon", "watermelons"),
    ("香蕉", "banana", "bananas"),
    ("蛋糕", "cake", "cakes"),
    ("盒子", "box", "boxes"),
    ("面包", "bread roll", "bread rolls"),
)
GREETINGS = (
    ("你好", "hello"),
    ("你好吗", "how are you"),
    ("我很好", "i am fine"),
    ("早上好", "good morning"),
    ("下午好", "good afternoon"),
    ("晚上好", "good evening"),
    ("谢谢", "thank you"),
    ("谢谢你", "thank you"),
    ("不客气", "you are welcome"),
    ("再见", "goodbye"),
    ("明天见", "see you tomorrow"),
    ("对不起", "i am sorry"),
    ("没关系", "it is all right"),
    ("很高兴认识你", "nice to meet you"),
    ("你叫什么名字", "what is your name"),
    ("现在几点", "what time is it"),
    ("今天星期几", "what day is it today"),
    ("今天几号", "what is the date today"),
    ("明天天气怎么样", "what will the weather be like tomorrow"),
    ("你喜欢什么颜色", "what colour do you like"),
)
OPPOSITES = (
    ("hot", "cold"),
    ("big", "small"),
    ("left", "right"),
    ("up", "down"),
    ("day", "night"),
    ("fast", "slow"),
    ("old", "new"),
    ("happy", "sad"),
    ("black", "white"),
    ("north", "south"),
    ("east", "west"),
    ("yes", "no"),
    ("open", "closed"),
    ("early", "late"),
    ("light", "dark"),
    ("buy", "sell"),
    ("first", "last"),
    ("good", "bad"),
    ("long", "short"),
    ("in", "out"),
)
COLOUR_MIXES = (
    ("blue", "yellow", "green"),
    ("red", "yellow", "orange"),
    ("red", "blue", "purple"),
    ("red", "white", "pink"),
    ("black", "white", "grey"),
    ("red", "green", "brown"),
)


def english_number(n: int) -> str:
    """0..99 in words: 21 -> "twenty one"."""
    if not 0 <= n <= 99:
        raise ConfigError(f"corpus numbers run from 0 to 99, got {n}")
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f" {_EN_ONES[ones]}" if ones else "")


def english_ordinal(n: int) -> str:
    """1..31 as an ordinal: 3 -> "third", 21 -> "twenty first", 30 -> "thirtieth"."""
    if not 1 <= n <= 31:
        raise ConfigError(f"corpus ordinals run from 1 to 31, got {n}")
    if n <= 12:
        return _EN_ORDINAL_ONES[n]
    if n < 20:
        return _EN_ONES[n] + "th"
    tens, ones = divmod(n, 10)
    if ones == 0:
        return _EN_TENS[tens][:-1] + "ieth"  # twenty -> twentieth
    return f"{_EN_TENS[tens]} {_EN_ORDINAL_ONES[ones]}"


def chinese_number(n: int, counting: bool = False) -> str:
    """0..99 in Chinese numerals: 21 -> 二十一; with ``counting`` (before a measure word) 2 -> 两."""
    if not 0 <= n <= 99:
        raise ConfigError(f"corpus numbers run from 0 to 99, got {n}")
    if counting and n == 2:
        return "两"
    if n < 10:
        return _ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _ZH_DIGITS[tens]) + "十" + (_ZH_DIGITS[ones] if ones else "")


def _counted(n: int, singular: str, plural: str) -> str:
    return f"{english_number(n)} {singular if n == 1 else plural}"


def _with_article(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


# ---------------------------------------------------------------------------------------------
# Mandarin sentences with their English translations, by template
# ---------------------------------------------------------------------------------------------


def _dates() -> list[tuple[str, str]]:
    pairs = []
    for zh, en in DAYS:
        pairs += [(f"今天{zh}", f"today is {en}"), (f"明天{zh}", f"tomorrow is {en}")]
        pairs += [(f"昨天{zh}", f"yesterday was {en}"), (f"{zh}见", f"see you on {en}")]
    for month, days in enumerate(_MONTH_DAYS, start=1):
        for day in range(1, days + 1):
            zh = f"{chinese_number(month)}月{chinese_number(day)}号"
            en = f"{MONTHS_EN[month - 1]} {english_ordinal(day)}"
            pairs += [
                (f"今天是{zh}", f"today is {en}"),
                (f"我的生日是{zh}", f"my birthday is {en}"),
            ]
    return pairs


def _times() -> list[tuple[str, str]]:
    pairs = []
    for hour in range(1, 13):
        zh_h, en_h = chinese_number(hour, counting=True), english_number(hour)
        pairs += [(f"现在{zh_h}点半", f"it is half past {en_h}")]
        pairs += [(f"我们{zh_h}点半见", f"see you at half past {en_h}")]
        for zh_p, en_p in PERIODS:
            pairs += [(f"现在{zh_p}{zh_h}点", f"it is {en_h} in the {en_p}")]
            for zh_d, en_d in DAYS:
                pairs += [
                    (
                        f"会议{zh_d}{zh_p}{zh_h}点开始",
                        f"the meeting starts at {en_h} in the {en_p} on {en_d}",
                    )
                ]
        for minute in MINUTES:
            zh_m, en_m = chinese_number(minute), english_number(minute)
            pairs += [(f"现在{zh_h}点{zh_m}分", f"it is {en_h} {en_m}")]
            pairs += [(f"火车{zh_h}点{zh_m}分开", f"the train leaves at {en_h} {en_m}")]
    return pairs


def _weather() -> list[tuple[str, str]]:
    pairs = []
    whens = [("今天", "it is {} today"), ("明天", "it will be {} tomorrow")]
    whens += [("昨天", "it was {} yesterday")]
    whens += [(zh, f"it will be {{}} on {en}") for zh, en in DAYS]
    for zh_when, en_form in whens:
        for zh_w, en_w in WEATHER:
            pairs.append((f"{zh_when}{zh_w}", en_form.format(en_w)))
    for zh_p, en_p in PRECIPITATION:
        pairs += [(f"今天会{zh_p}", f"it will {en_p} today")]
        pairs += [(f"明天会{zh_p}", f"it will {en_p} tomorrow")]
        pairs += [(f"昨天{zh_p}了", f"it was {en_p}ing yesterday")]
        pairs += [(f"{zh}会{zh_p}", f"it will {en_p} on {en}") for zh, en in DAYS]
    for n in range(41):
        degrees = _counted(n, "degree", "degrees")
        pairs += [(f"温度是{chinese_number(n, counting=True)}度", f"the temperature is {degrees}")]
        pairs += [(f"明天{chinese_number(n, counting=True)}度", f"it will be {degrees} tomorrow")]
    return pairs


def _directions() -> list[tuple[str, str]]:
    pairs = []
    for zh, en in PLACES:
        pairs += [
            (f"{zh}在哪里", f"where is the {en}"),
            (f"去{zh}怎么走", f"how do i get to the {en}"),
        ]
        pairs += [(f"{zh}在{zh_s}", f"the {en} is {en_s}") for zh_s, en_s in SIDES]
        pairs += [(f"{zh}在{zh_c}边", f"the {en} is to the {en_c}") for zh_c, en_c in COMPASS]
        for n in range(1, 21):
            km = _counted(n, "kilometer", "kilometers")
            pairs += [(f"{zh}离这里{chinese_number(n, True)}公里", f"the {en} is {km} from here")]
    for zh_c, en_c in COMPASS:
        for n in range(1, 31):
            minutes = _counted(n, "minute", "minutes")
            pairs += [(f"往{zh_c}走{chinese_number(n, True)}分钟", f"go {en_c} for {minutes}")]
    for n in range(1, 100):
        meters = _counted(n, "meter", "meters")
        pairs += [(f"往前走{chinese_number(n, True)}米", f"go straight for {meters}")]
    for zh_t, en_t in TURNS:
        pairs += [(f"往{zh_t}拐", f"turn {en_t}")]
        for n in range(1, 6):
            ordinal = english_ordinal(n)
            pairs += [
                (
                    f"在第{chinese_number(n)}个路口往{zh_t}拐",
                    f"turn {en_t} at the {ordinal} crossing",
                )
            ]
    return pairs


def _colours() -> list[tuple[str, str]]:
    pairs = [(f"我喜欢{zh}", f"i like {en}") for zh, en in COLOURS]
    for zh_c, en_c in COLOURS:
        for zh_i, en_i, _ in ITEMS:
            pairs += [(f"这个{zh_i}是{zh_c}的", f"this {en_i} is {en_c}")]
            pairs += [(f"我想要一个{zh_c}的{zh_i}", f"i want {_with_article(f'{en_c} {en_i}')}")]
    return pairs


def _shopping() -> list[tuple[str, str]]:
    pairs = []
    for zh, singular, plural in ITEMS:
        pairs += [(f"{zh}多少钱", f"how much is the {singular}")]
        pairs += [(f"你要几个{zh}", f"how many {plural} do you want")]
        pairs += [(f"这个{zh}太贵了", f"this {singular} is too expensive")]
        for n in range(1, 100):
            yuan = _counted(n, "yuan", "yuan")
            pairs += [(f"一个{zh}{chinese_number(n, True)}块钱", f"one {singular} costs {yuan}")]
        for n in range(1, 11):
            things = _counted(n, singular, plural)
            pairs += [(f"我要买{chinese_number(n, True)}个{zh}", f"i want to buy {things}")]
    for n in range(1, 100):
        yuan = _counted(n, "yuan", "yuan")
        pairs += [(f"一共{chinese_number(n, True)}块钱", f"that is {yuan} in total")]
    return pairs


def _numbers() -> list[tuple[str, str]]:
    pairs = []
    for n in range(1, 100):
        years = _counted(n, "year", "years")
        pairs += [(f"我今年{chinese_number(n, True)}岁", f"i am {years} old")]
        pairs += [(f"我的房间是{chinese_number(n)}号", f"my room is number {english_number(n)}")]
    for a in range(11):
        for b in range(11):
            zh = f"{chinese_number(a)}加{chinese_number(b)}等于{chinese_number(a + b)}"
            pairs += [
                (zh, f"{english_number(a)} plus {english_number(b)} is {english_number(a + b)}")
            ]
    return pairs


_MANDARIN_TEMPLATES: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "dates": _dates,
    "times": _times,
    "weather": _weather,
    "directions": _directions,
    "colours": _colours,
    "shopping": _shopping,
    "numbers": _numbers,
    "greetings": lambda: list(GREETINGS),
}


# ---------------------------------------------------------------------------------------------
# English-only sentences (the English side of every pair is spoken too)
# ---------------------------------------------------------------------------------------------


def _english_prices() -> list[str]:
    sentences = []
    for _, singular, plural in ITEMS:
        for n in range(1, 100):
            sentences.append(f"the {singular} costs {_counted(n, 'dollar', 'dollars')}")
        for n in range(1, 11):
            sentences.append(f"i would like {_counted(n, singular, plural)} please")
        sentences.append(f"do you have any {plural}")
    return sentences


def _english_phone_numbers() -> list[str]:
    # Runs of digits give the acoustic model every digit in many neighbours.
    rng = random.Random("mooer-phone-numbers")
    numbers = {tuple(rng.randrange(10) for _ in range(4)) for _ in range(600)}
    return [
        "my phone number is " + " ".join(_EN_ONES[d] for d in digits) for digits in sorted(numbers)
    ]


_ENGLISH_TEMPLATES: dict[str, Callable[[], list[str]]] = {
    "prices": _english_prices,
    "phone numbers": _english_phone_numbers,
}


# ---------------------------------------------------------------------------------------------
# Spoken chat: English questions, short text answers
# ---------------------------------------------------------------------------------------------

_PLUS_FORMS = ("what is {a} plus {b}", "how much is {a} plus {b}", "add {a} and {b}")
_MINUS_FORMS = ("what is {a} minus {b}", "how much is {a} minus {b}", "take {b} away from {a}")
_TIMES_FORMS = ("what is {a} times {b}", "how much is {a} times {b}", "multiply {a} by {b}")
_FOLLOW_PLUS = "and plus {k}"
_FOLLOW_MINUS = "and minus {k}"


def _arithmetic() -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    w = english_number
    for a in range(21):
        for b in range(11):
            answer = a + b
            for form in _PLUS_FORMS:
                first = (form.format(a=w(a), b=w(b)), w(answer))
                dialogues.append((first,))
                for k in range(1, 6):
                    dialogues.append((first, (_FOLLOW_PLUS.format(k=w(k)), w(answer + k))))
                    if answer - k >= 0:
                        dialogues.append((first, (_FOLLOW_MINUS.format(k=w(k)), w(answer - k))))
            if b <= a:
                for form in _MINUS_FORMS:
                    dialogues.append(((form.format(a=w(a), b=w(b)), w(a - b)),))
    for a in range(1, 10):
        for b in range(1, 10):
            for form in _TIMES_FORMS:
                dialogues.append(((form.format(a=w(a), b=w(b)), w(a * b)),))
    return dialogues


def _successions() -> list[Dialogue]:
    """The day / month / number after or before, with "and the one after that" follow-ups."""
    dialogues: list[Dialogue] = []
    sequences = (
        ("day", [en for _, en in DAYS], True),
        ("month", MONTHS_EN, True),
        ("number", [english_number(n) for n in range(100)], False),
    )
    for noun, names, cyclic in sequences:
        count = len(names)
        for i, name in enumerate(names):
            for direction, step in (("after", 1), ("before", -1)):
                j = i + step
                if not cyclic and not 0 <= j < count:
                    continue
                answer = names[j % count]
                forms = (
                    f"what {noun} comes {direction} {name}",
                    f"what is the {noun} {direction} {name}",
                    f"which {noun} is {direction} {name}",
                )
                for question in forms:
                    dialogues.append(((question, answer),))
                k = j + step
                if cyclic or 0 <= k < count:
                    follow = (f"what about the {noun} {direction} that", names[k % count])
                    dialogues.append(((forms[0], answer), follow))
    return dialogues


def _opposites() -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    for x, y in OPPOSITES:
        for word, answer in ((x, y), (y, x)):
            forms = (
                f"what is the opposite of {word}",
                f"tell me the opposite of {word}",
                f"what word means the opposite of {word}",
            )
            dialogues += [((q, answer),) for q in forms]
            dialogues.append(((forms[0], answer), ("and the opposite of that", word)))
    return dialogues


# What the assistant says when it speaks first (no user turn yet): words of the small talk
OPENING = "hello how are you"


def _facts() -> list[Dialogue]:
    qa: list[tuple[str, str]] = []
    for a, b, mix in COLOUR_MIXES:
        for x, y in ((a, b), (b, a)):
            qa += [(f"what colour do you get from {x} and {y}", mix)]
            qa += [(f"what do {x} and {y} make", mix)]
    counts = (("days", "a week", 7), ("months", "a year", 12), ("hours", "a day", 24))
    counts += (("minutes", "an hour", 60), ("seconds", "a minute", 60))
    for unit, span, n in counts:
        qa += [(f"how many {unit} are in {span}", english_number(n))]
        qa += [(f"how many {unit} are there in {span}", english_number(n))]
    small_talk = (
        (("hello how are you", "hi how are you", "how are you today"), "i am fine thank you"),
        (("what is your name", "tell me your name", "who are you"), "my name is mooer"),
        (("thank you", "thank you very much", "thanks a lot"), "you are welcome"),
        (("goodbye", "see you later", "bye bye"), "goodbye"),
        (("good morning", "good morning to you", "morning"), "good morning"),
        (("what colour is the sky", "what colour is the sky today"), "blue"),
        (("what colour is grass", "what colour is the grass"), "green"),
    )
    for questions, answer in small_talk:
        qa += [(q, answer) for q in questions]
    return [(turn,) for turn in qa]


_CHAT_TEMPLATES: dict[str, Callable[[], list[Dialogue]]] = {
    "arithmetic": _arithmetic,
    "successions": _successions,
    "opposites": _opposites,
    "facts": _facts,
}


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def mandarin_pairs() -> list[tuple[str, str]]:
    """Every Mandarin sentence with its aligned English translation, e.g. 今天星期三 -> "today
    is wednesday"."""
    return _unique([pair for make in _MANDARIN_TEMPLATES.values() for pair in make()])


def english_sentences() -> list[str]:
    """Every English sentence: the English side of the pairs plus English-only templates."""
    sentences = [en for _, en in mandarin_pairs()]
    sentences += [s for make in _ENGLISH_TEMPLATES.values() for s in make()]
    return _unique(sentences)


def chat_dialogues() -> list[Dialogue]:
    """Every chat dialogue, one or two (question, answer) turns."""
    return _unique([d for make in _CHAT_TEMPLATES.values() for d in make()])


# ---------------------------------------------------------------------------------------------
# Splitting and sampling
# ---------------------------------------------------------------------------------------------


def is_heldout(key: str) -> bool:
    """Whether the sentence ``key`` belongs to the held-out split (stable across runs/seeds)."""
    digest = hashlib.md5(key.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 1000 < HELDOUT_PER_MILLE


def _english_item(text: str) -> Utterance:
    return Utterance("", "en", text, "", "asr", text)


def _mandarin_item(task: str, pair: tuple[str, str]) -> Utterance:
    zh, en = pair
    target = {"asr": zh, "ast": en, "mtl": f"{zh}\n{en}"}[task]
    return Utterance("", "zh", zh, en, task, target)


def _chat_item(dialogue: Dialogue) -> Utterance:
    question, answer = dialogue[-1]
    return Utterance("", "en", question, "", "chat", answer, list(dialogue[:-1]))


SPLITS = ("train", "heldout")


@functools.cache
def _pools(kind: tuple[str, str]) -> dict[str, dict[str, list[Utterance]]]:
    """split -> template name -> utterances, for one (task, language) of ``TASK_MIX``.

    Cached: callers must not modify the result (``_Sampler.draw`` hands out copies).
    """
    task, lang = kind
    keyed: dict[str, list[tuple[str, Utterance]]] = {}  # template -> [(split key, utterance)]
    if task == "chat":
        for name, make in _CHAT_TEMPLATES.items():
            keyed[name] = [(d[0][0], _chat_item(d)) for d in _unique(make())]
    elif lang == "zh":
        for name, make in _MANDARIN_TEMPLATES.items():
            keyed[name] = [(p[1], _mandarin_item(task, p)) for p in _unique(make())]
    else:
        english = {n: [en for _, en in make()] for n, make in _MANDARIN_TEMPLATES.items()}
        english |= {n: make() for n, make in _ENGLISH_TEMPLATES.items()}
        for name, sentences in english.items():
            keyed[name] = [(s, _english_item(s)) for s in _unique(sentences)]
    pools: dict[str, dict[str, list[Utterance]]] = {split: {} for split in SPLITS}
    for name, items in keyed.items():
        for split in SPLITS:
            wanted = split == "heldout"
            pools[split][name] = [u for key, u in items if is_heldout(key) == wanted]
    return pools


class _Sampler:
    """Draws utterances of one kind and split: a template (weighted by the square root of its
    size, so big templates do not drown small ones), then the next one of that template's
    shuffled sentences, reshuffled once all have been used."""

    def __init__(self, groups: dict[str, list[Utterance]], rng: random.Random) -> None:
        self._groups = {name: items for name, items in groups.items() if items}
        self._names = sorted(self._groups)
        self._weights = [math.sqrt(len(self._groups[n])) for n in self._names]
        self._queues: dict[str, list[Utterance]] = {n: [] for n in self._names}
        self._rng = rng

    def draw(self) -> Utterance:
        name = self._rng.choices(self._names, self._weights)[0]
        queue = self._queues[name]
        if not queue:
            queue.extend(self._groups[name])
            self._rng.shuffle(queue)
        item = queue.pop()
        return replace(item, history=list(item.history))  # a fresh object: ids are set later


def _sampler(split: str, kind: tuple[str, str], seed: int) -> _Sampler:
    rng = random.Random(f"mooer-corpus/{seed}/{split}/{kind[0]}/{kind[1]}")
    return _Sampler(_pools(kind)[split], rng)


def _counts(n: int) -> dict[tuple[str, str], int]:
    """``n`` split over ``TASK_MIX`` by largest remainders, so the counts add up to ``n``."""
    exact = {kind: n * share for kind, share in TASK_MIX.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    return counts


def build_corpus(
    n_train: int, n_heldout: int, seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """(train, held-out) utterances in ``TASK_MIX`` proportions, shuffled; the same for a seed.

    No held-out sentence occurs in the training list (see the module docstring for the key).
    """
    for name, value in (("n_train", n_train), ("n_heldout", n_heldout)):
        check_number(value, name, 0, integer=True)
    counts = {"train": _counts(n_train), "heldout": _counts(n_heldout)}
    splits: dict[str, list[Utterance]] = {split: [] for split in SPLITS}
    for kind in TASK_MIX:
        for split in SPLITS:
            sampler = _sampler(split, kind, seed)
            splits[split] += [sampler.draw() for _ in range(counts[split][kind])]
    result = []
    for split, items in splits.items():
        random.Random(f"mooer-corpus/{seed}/{split}/order").shuffle(items)
        for i, item in enumerate(items):
            item.id = f"{split}-{i:06d}"
        result.append(items)
    return result[0], result[1]


def more_chat(n_train: int, n: int, seed: int = 0) -> list[Utterance]:
    """``n`` more training chat items, ids ``chat-000000``...: the ones ``build_corpus(n_train)``
    would draw after its own, so dialogues it never spoke come first.

    Chat is the task whose audio a small model learns by heart first: more spoken dialogues,
    not more passes over the same ones, is what carries it to new questions.
    """
    check_number(n, "n", 0, integer=True)
    kind = ("chat", "en")
    sampler = _sampler("train", kind, seed)
    for _ in range(_counts(n_train)[kind]):
        sampler.draw()
    items = [sampler.draw() for _ in range(n)]
    for i, item in enumerate(items):
        item.id = f"chat-{i:06d}"
    return items


# spoken language and task of multi-sentence items, in turn: what a segmenter hands the model
# when a speaker does not pause long between sentences
MULTI_KINDS = (("asr", "en"), ("asr", "zh"), ("ast", "zh"))
MULTI_SIZES = (2, 3)  # sentences per item


def sentences_in_a_row(sentences: Sequence[str]) -> str:
    """Sentences as one text, each but the last ended by its full stop ("。" after Mandarin,
    "." after English; empty ones left out). The stop cues that a sentence ended and another
    follows; the last has none, as a single sentence's target has none, so the answer ends where
    the speech does."""
    from mooer.text import join_texts, language_of

    *before, last = [s.strip() for s in sentences if s.strip()] or [""]
    return join_texts([*(s + ("。" if language_of(s) == "zh" else ".") for s in before), last])


def _drawn_in_a_row(split: str, n: int, seed: int) -> list[tuple[tuple[str, str], list[Utterance]]]:
    """The (task, language) and the sentences of ``multi_sentence``'s ``n`` items, in order."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_number(n, "n", 0, integer=True)
    rng = random.Random(f"mooer-corpus/{seed}/{split}/multi")
    samplers = [
        _Sampler(_pools(kind)[split], random.Random(f"mooer-corpus/{seed}/{split}/multi/{kind}"))
        for kind in MULTI_KINDS
    ]
    return [
        (
            MULTI_KINDS[i % len(MULTI_KINDS)],
            [samplers[i % len(MULTI_KINDS)].draw() for _ in range(rng.choice(MULTI_SIZES))],
        )
        for i in range(n)
    ]


def multi_sentence(split: str, n: int, seed: int = 0, marks: bool = False) -> list[Utterance]:
    """``n`` items of two or three sentences of ``split``, one task and language each (asr
    English, asr Mandarin, ast zh->en in turn), ids ``multi-000000``...: ``parts`` holds the
    sentences, ``text``/``translation``/``target`` their joined texts (with ``marks``, each
    sentence but the last ends with its full stop: see ``sentences_in_a_row``).

    Drawn as ``build_corpus`` draws single sentences (its split, its samplers), so a held-out
    sentence is never part of a training item.
    """
    from mooer.text import join_texts

    join = sentences_in_a_row if marks else join_texts
    items = []
    for i, ((task, lang), parts) in enumerate(_drawn_in_a_row(split, n, seed)):
        text = join([u.text for u in parts])
        translation = join([u.translation for u in parts])
        target = translation if task == "ast" else text
        parts_text = [u.text for u in parts]
        items.append(
            Utterance(f"multi-{i:06d}", lang, text, translation, task, target, [], parts_text)
        )
    return items


def multi_sentence_alone(split: str, n: int, seed: int = 0) -> list[Utterance]:
    """The sentences of ``multi_sentence(split, n, seed)``'s items one by one, each with its
    item's task, ids ``multi-000000-0``...: the same sentences heard alone end where they end,
    which a model taught to go on after a sentence must still tell apart."""
    return [
        replace(u, id=f"multi-{i:06d}-{j}", history=[])
        for i, (_, parts) in enumerate(_drawn_in_a_row(split, n, seed))
        for j, u in enumerate(parts)
    ]
