// AudioWorklet processor: the microphone's frames -> 24 kHz PCM16 chunks of 100 ms, posted to the page.
import { Pcm24kEncoder } from "./pcm.js";

class Pcm24kCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.encoder = new Pcm24kEncoder(sampleRate);
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        const rest = this.encoder.flush();
        this.port.postMessage({ samples: rest, last: true }, [rest.buffer]);
      }
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(mono.length);
        for (const c of channels) for (let i = 0; i < c.length; i++) mono[i] += c[i] / channels.length;
      }
      for (const chunk of this.encoder.push(mono)) this.port.postMessage({ samples: chunk }, [chunk.buffer]);
    }
    return true;
  }
}

registerProcessor("pcm24k-capture", Pcm24kCapture);
