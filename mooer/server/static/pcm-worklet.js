// Microphone capture for mooer: resample the AudioContext's rate to 16 kHz and hand over
// 100 ms blocks of little-endian PCM16, which the page sends as binary websocket frames.
const TARGET_RATE = 16000;
const BLOCK = TARGET_RATE / 10; // samples per message: 100 ms

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // where the next output sample falls, in input samples from `previous`
    this.previous = 0; // the last input sample of the previous quantum (for interpolation)
    this.smooth = 0; // one-pole low-pass state: keeps what folds down below 8 kHz quieter
    this.alpha = Math.min(1, (2 * Math.PI * 7000) / sampleRate);
    this.block = new Int16Array(BLOCK);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    // Low-pass in place into a copy so `previous` stays the filtered signal.
    const x = new Float32Array(channel.length + 1);
    x[0] = this.previous;
    for (let i = 0; i < channel.length; i++) {
      this.smooth += this.alpha * (channel[i] - this.smooth);
      x[i + 1] = this.step > 1 ? this.smooth : channel[i];
    }
    // Linear interpolation at the output instants that fall inside this quantum.
    while (this.position < channel.length) {
      const i = Math.floor(this.position);
      const frac = this.position - i;
      const value = x[i] + (x[i + 1] - x[i]) * frac;
      const clipped = Math.max(-1, Math.min(1, value));
      this.block[this.filled++] = clipped < 0 ? clipped * 32768 : clipped * 32767;
      if (this.filled === BLOCK) {
        this.port.postMessage(this.block.buffer, [this.block.buffer]);
        this.block = new Int16Array(BLOCK);
        this.filled = 0;
      }
      this.position += this.step;
    }
    this.position -= channel.length;
    this.previous = x[channel.length];
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
