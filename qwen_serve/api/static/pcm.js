// Microphone samples (float32 at the AudioContext's rate) -> 16-bit little-endian PCM at 24 kHz,
// the Realtime API's `audio/pcm` format. Streaming: a windowed-sinc low-pass (when the input is
// faster than 24 kHz) then linear interpolation, state carried across chunks. Shared by the
// AudioWorklet (pcm-worklet.js) and the ScriptProcessor fallback (playground.js).

export const TARGET_RATE = 24000;

/** Low-pass FIR: `n` taps (odd), cutoff `fc` in cycles per input sample, Blackman window, unit gain. */
function lowPass(fc, n) {
  const taps = new Float32Array(n);
  const mid = (n - 1) / 2;
  let sum = 0;
  for (let k = 0; k < n; k++) {
    const x = k - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * k) / (n - 1)) + 0.08 * Math.cos((4 * Math.PI * k) / (n - 1));
    taps[k] = sinc * w;
    sum += taps[k];
  }
  for (let k = 0; k < n; k++) taps[k] /= sum;
  return taps;
}

export class Pcm24kEncoder {
  /** `inputRate`: the source's sample rate; `chunkSamples`: output samples per chunk (2400 = 100 ms). */
  constructor(inputRate, chunkSamples = 2400) {
    this.step = inputRate / TARGET_RATE; // input samples per output sample
    this.taps = this.step > 1 ? lowPass((0.5 / this.step) * 0.9, 63) : null;
    this.history = new Float32Array(this.taps ? this.taps.length - 1 : 0);
    this.prev = 0; // the last filtered sample of the previous chunk (position -1)
    this.pos = 1; // next output position, in filtered samples from `prev`
    this.out = new Int16Array(chunkSamples);
    this.filled = 0;
  }

  /** Feeds samples; returns the full chunks now ready (Int16Array each). */
  push(input) {
    const x = this.filter(input);
    const chunks = [];
    let pos = this.pos;
    // positions index [prev, ...x]: 0 is prev, i >= 1 is x[i - 1]
    while (Math.floor(pos) < x.length) {
      const i = Math.floor(pos);
      const f = pos - i;
      const a = i === 0 ? this.prev : x[i - 1];
      const b = x[i];
      const v = Math.max(-1, Math.min(1, a + (b - a) * f));
      this.out[this.filled++] = Math.round(v * 32767);
      if (this.filled === this.out.length) {
        chunks.push(this.out);
        this.out = new Int16Array(this.out.length);
        this.filled = 0;
      }
      pos += this.step;
    }
    if (x.length > 0) {
      this.pos = pos - x.length;
      this.prev = x[x.length - 1];
    }
    return chunks;
  }

  /** What is left (fewer than a chunk's samples), emptying the encoder. */
  flush() {
    const rest = this.out.slice(0, this.filled);
    this.filled = 0;
    return rest;
  }

  filter(input) {
    if (!this.taps) return input;
    const taps = this.taps;
    const h = this.history.length;
    const ext = new Float32Array(h + input.length);
    ext.set(this.history);
    ext.set(input, h);
    const y = new Float32Array(input.length);
    for (let n = 0; n < input.length; n++) {
      let acc = 0;
      for (let k = 0; k < taps.length; k++) acc += taps[k] * ext[n + h - k];
      y[n] = acc;
    }
    this.history = ext.slice(ext.length - h);
    return y;
  }
}

/** Little-endian bytes of 16-bit samples, base64 (as `input_audio_buffer.append` wants them). */
export function base64Pcm16(samples) {
  const bytes = new Uint8Array(samples.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < samples.length; i++) view.setInt16(2 * i, samples[i], true);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
