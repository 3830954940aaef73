"""The speech path before the LLM: audio -> fbank/LFR/CMVN -> SAN-M encoder -> adapter."""
