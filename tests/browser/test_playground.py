"""The playground page in headless Chromium against the in-process app (fake engine) on 127.0.0.1.

Upload: the transcript on the page equals what the API returns for the same
file, as json, streamed, verbose_json with words, and an HTTP error in
OpenAI's envelope; with confidence asked, its tokens are shaded by the
log-probabilities the API gives (and the placing of tokens on a text is
checked on its own). Microphone: Chromium plays a WAV file as the microphone;
the page streams it through /v1/realtime, the server's VAD cuts the turn,
and the completed item's transcript is the fake engine's for the audio it got.
Each flow's end state is saved as a screenshot under tmp_path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from api.conftest import MODEL, MODEL_B, TOKEN, Harness, make_settings, wav_bytes
from api.fakes import expected_words
from api.test_realtime import record_pcm, serve

from .page import WAIT_S, Items, Page, microphone_wav

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    for var in ("QWEN_API_TOKEN", "QWEN_MAX_UPLOAD_MB", "QWEN_MAX_AUDIO_SECONDS", "QWEN_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return Harness(make_settings())


@pytest.fixture
def base_url(harness: Harness) -> Iterator[str]:
    with serve(harness) as url:
        yield url


def api_transcription(base_url: str, path: Path, **fields: Any) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"file": (path.name, f, "audio/wav")},
            data={"model": MODEL, **fields},
            timeout=WAIT_S,
        )


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes(3.2))
    return path


def test_root_redirects_and_the_assets_are_served(base_url: str) -> None:
    page = httpx.get(f"{base_url}/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url) == f"{base_url}/playground/"
    assert "text/html" in page.headers["content-type"] and "playground.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]  # the flows below run under it
    for asset, kind in [("playground.js", "javascript"), ("pcm.js", "javascript"),
                        ("pcm-worklet.js", "javascript"), ("playground.css", "text/css")]:  # fmt: skip
        response = httpx.get(f"{base_url}/playground/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
    assert "/playground/" not in httpx.get(f"{base_url}/openapi.json").json()["paths"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_upload_shows_the_transcript(
    chromium: Callable[..., Any], base_url: str, speech_wav: Path, tmp_path: Path, stream: bool
) -> None:
    expected = api_transcription(base_url, speech_wav).json()["text"]
    assert expected == " ".join(expected_words(3.2))
    page = Page(chromium(), base_url)
    page.sign_in(TOKEN, MODEL)
    page.transcribe(speech_wav, stream=stream)
    page.screenshot(tmp_path, "upload-streamed" if stream else "upload-json")
    assert page.text("file-status").startswith("Done"), page.text("file-error")
    assert page.text("transcript") == expected
    assert "input tokens" in page.text("file-meta")
    assert page.el("file-error").get_attribute("hidden") is not None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_upload_shades_unsure_tokens(
    chromium: Callable[..., Any], base_url: str, speech_wav: Path, tmp_path: Path, stream: bool
) -> None:
    body = api_transcription(base_url, speech_wav, **{"include[]": "logprobs"}).json()
    probabilities = [math.exp(t["logprob"]) for t in body["logprobs"]]
    assert min(probabilities) < 0.5 < max(probabilities)  # the fake's every third token is unsure
    page = Page(chromium(), base_url)
    page.sign_in(TOKEN, MODEL)
    page.transcribe(speech_wav, stream=stream, confidence=True)
    page.screenshot(tmp_path, "upload-confidence-streamed" if stream else "upload-confidence")
    assert page.text("file-status").startswith("Done"), page.text("file-error")
    assert page.text("transcript") == body["text"]
    assert page.shaded("#transcript") == [
        (t["token"].strip(), t["logprob"], f"p = {p:.3f}", p < 0.5)
        for t, p in zip(body["logprobs"], probabilities, strict=True)
    ]
    unsure = sum(p < 0.5 for p in probabilities)
    assert f"{unsure} of {len(probabilities)} tokens below p = 0.5" in page.text("file-meta")

    page.transcribe(speech_wav, stream=stream)  # the box unticked: the text alone
    assert page.text("transcript") == body["text"] and page.shaded("#transcript") == []
    assert "tokens below" not in page.text("file-meta")


SHOW_CONFIDENCE = """
const [text, logprobs, done] = arguments;
import('./playground.js').then(({ showConfidence }) => {
  const p = document.createElement('p');
  const counts = showConfidence(p, text, logprobs);
  done([p.textContent, [...p.childNodes].map(n => n.nodeType === 3 ? ['', n.textContent] :
        [n.dataset.logprob, n.textContent]), counts]);
}, (e) => done(String(e)));
"""


def test_confidence_is_placed_on_the_text(chromium: Callable[..., Any], base_url: str) -> None:
    """The page's placing of tokens on a transcript: a character cut between two tokens is one
    piece (their log-probabilities summed), whitespace tokens and tokens the text lacks (a
    repetition the parser collapsed) are left out, text no token spells (stripped edges, the space
    joining long audio's chunks) stays plain, and the text is the transcript exactly."""
    driver = chromium()
    driver.get(f"{base_url}/playground/")
    driver.set_script_timeout(WAIT_S)

    def token(text: bytes, logprob: float) -> dict[str, Any]:
        return {"token": text.decode(errors="replace"), "logprob": logprob, "bytes": list(text)}

    text = "Hi, wörld next"
    tokens = [token(b"\n", -0.5), token(b"Hi", -0.1), token(b",", -0.2), token(b" w", -0.3),
              token(b"\xc3", -0.25), token(b"\xb6rld", -0.375), token(b" again", -2.0),
              token(b"next", -1.0), token(b" ", -0.4)]  # fmt: skip
    result = driver.execute_async_script(SHOW_CONFIDENCE, text, tokens)
    assert isinstance(result, list), result
    shown, nodes, counts = result
    assert shown == text
    assert nodes == [["-0.1", "Hi"], ["-0.2", ","], ["", " "], ["-0.3", "w"], ["-0.625", "örld"],
                     ["", " "], ["-1", "next"]]  # fmt: skip
    assert counts == [5, 1]  # p = e^-1 < 0.5: "next" alone is unsure


def test_upload_verbose_json_words_and_srt(
    chromium: Callable[..., Any], base_url: str, speech_wav: Path, tmp_path: Path
) -> None:
    body = api_transcription(
        base_url, speech_wav, response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    ).json()
    page = Page(chromium(), base_url)
    page.sign_in(TOKEN, MODEL)
    page.transcribe(speech_wav, response_format="verbose_json", words=True)
    page.screenshot(tmp_path, "upload-words")
    assert page.text("transcript") == body["text"]
    rows = page.driver.execute_script(
        "return [...document.querySelectorAll('#word-table tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    assert rows == [
        [str(i + 1), f"{w['start']:.2f}", f"{w['end']:.2f}", w["word"]] for i, w in enumerate(body["words"])
    ]
    srt = api_transcription(base_url, speech_wav, response_format="srt").text
    page.transcribe(speech_wav, response_format="srt")
    assert page.text("raw") == srt


def test_errors_are_shown(chromium: Callable[..., Any], base_url: str, tmp_path: Path) -> None:
    page = Page(chromium(), base_url)
    page.el("api-key").send_keys("sk-wrong")
    page.el("load-models").click()
    page.wait(lambda: page.text("settings-error"), "the auth error")
    assert "HTTP 401: invalid_api_key: Incorrect API key provided." in page.text("settings-error")
    page.sign_in(TOKEN, MODEL_B)
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"not audio at all" * 100)
    page.transcribe(bad)
    page.screenshot(tmp_path, "upload-error")
    assert page.text("file-error").startswith("HTTP 400: "), page.text("file-error")


# ---- the microphone -------------------------------------------------------------------------


def live_session(
    chromium: Callable[..., Any],
    harness: Harness,
    base_url: str,
    tmp_path: Path,
    speech_s: float,
    stop_when: Callable[[Items], bool],
    capture: str = "worklet",
    confidence: bool = False,
) -> tuple[list[np.ndarray], Items]:
    """Start the microphone, press Stop once `stop_when(the items on the page)`, wait for the close;
    returns the audio of each item the engine got and the items on the page (one, completed).
    `capture="scriptprocessor"`: as in a browser without AudioWorklet (the page's fallback)."""
    seen = record_pcm(harness)
    page = Page(chromium(microphone=microphone_wav(tmp_path / "mic.wav", speech_s)), base_url)
    page.sign_in(TOKEN, MODEL)
    if capture == "scriptprocessor":
        hide = "Object.defineProperty(BaseAudioContext.prototype, 'audioWorklet', {get: () => undefined})"
        page.driver.execute_script(hide)
        assert page.driver.execute_script("return new AudioContext().audioWorklet === undefined")
    statuses: set[str] = set()

    def watching(items: Items) -> bool:
        statuses.add(page.text("live-status"))
        return stop_when(items)

    items = page.live(watching, confidence=confidence)
    assert "Listening — speak. Turns: server VAD, 500 ms of silence." in statuses, statuses
    page.screenshot(tmp_path, f"microphone-{capture}-{speech_s:g}s{'-confidence' if confidence else ''}")
    assert len(seen) == len(items) == 1, items
    words = expected_words(seen[0].size / 16000)
    assert items[0] == (" ".join(words), "done")
    shaded = page.shaded("#items li .text")
    if not confidence:
        assert shaded == []
    else:  # each word a token of the completed item, shaded by its probability
        assert [text for text, *_ in shaded] == words
        for _, logprob, title, unsure in shaded:
            assert title == f"p = {math.exp(logprob):.3f}" and unsure == (math.exp(logprob) < 0.5)
    return seen, items


@pytest.mark.parametrize(
    ("capture", "confidence"), [("worklet", False), ("scriptprocessor", False), ("worklet", True)]
)
def test_microphone_live_transcript(
    chromium: Callable[..., Any],
    harness: Harness,
    base_url: str,
    tmp_path: Path,
    capture: str,
    confidence: bool,
) -> None:
    def completed(items: Items) -> bool:
        return bool(items) and items[0][1] == "done"

    _, items = live_session(chromium, harness, base_url, tmp_path, 2.0, completed, capture, confidence)
    # the turn the server cut holds the 2 s of speech (plus padding): the fake hears 4-6 words
    assert 4 <= len(items[0][0].split()) <= 6, items


def test_microphone_with_semantic_vad(
    chromium: Callable[..., Any], harness: Harness, base_url: str, tmp_path: Path
) -> None:
    """Turns chosen to end with the sentence: the page asks for semantic VAD and says what the
    server took; the fake model's answer ends a sentence, so the turn ends at its pause."""
    from selenium.webdriver.support.ui import Select

    harness.engines[MODEL].sentence_end = "."
    seen = record_pcm(harness)
    page = Page(chromium(microphone=microphone_wav(tmp_path / "mic.wav", 2.0)), base_url)
    page.sign_in(TOKEN, MODEL)
    Select(page.el("turns")).select_by_value("semantic_vad")
    statuses: set[str] = set()

    def completed(items: Items) -> bool:
        statuses.add(page.text("live-status"))
        return bool(items) and items[0][1] == "done"

    items = page.live(completed)
    assert "Listening — speak. Turns: semantic VAD, eagerness auto." in statuses, statuses
    assert len(seen) == len(items) == 1
    assert items[0] == (" ".join(expected_words(seen[0].size / 16000)) + ".", "done")


def test_stop_during_speech_commits_the_turn(
    chromium: Callable[..., Any], harness: Harness, base_url: str, tmp_path: Path
) -> None:
    # 1.5 s into the turn (its 20 s of speech far from over), the stop button commits it
    since: list[float] = []

    def speaking_for_a_while(items: Items) -> bool:
        if items and items[0][1] == "speaking…" and not since:
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] > 1.5

    seen, _ = live_session(chromium, harness, base_url, tmp_path, 20.0, speaking_for_a_while)
    assert 1.5 < seen[0].size / 16000 < 10.0


def test_live_errors_are_shown(chromium: Callable[..., Any], base_url: str, tmp_path: Path) -> None:
    page = Page(chromium(microphone=microphone_wav(tmp_path / "mic.wav")), base_url)
    page.sign_in(TOKEN, MODEL)
    page.el("api-key").clear()
    page.el("api-key").send_keys("sk-wrong")  # the models stay listed: the WebSocket gets the wrong key
    page.el("mic-start").click()
    page.wait(lambda: page.el("mic-start").is_enabled(), "the refused session to end")
    assert page.text("live-error") == "invalid_api_key: Incorrect API key provided.", page.text("live-error")
    assert page.el("mic-start").is_enabled() and not page.el("mic-stop").is_enabled()

    page.sign_in(TOKEN, MODEL, language="ar")  # not one of the fake model's languages
    page.el("mic-start").click()
    page.wait(
        lambda: page.text("live-status") == "Stopped.", "the refused session.update to stop the session"
    )
    assert "Unsupported language 'ar'" in page.text("live-error"), page.text("live-error")

    denied = Page(chromium(deny_microphone=True), base_url)
    denied.sign_in(TOKEN, MODEL)
    denied.el("mic-start").click()
    denied.wait(lambda: denied.text("live-error"), "the permission error")
    denied.screenshot(tmp_path, "microphone-denied")
    assert denied.text("live-error").startswith("Microphone permission was denied."), denied.text(
        "live-error"
    )
    assert denied.el("mic-start").is_enabled()


# ---- the page's resampler (pcm.js) in the browser ---------------------------------------------

ENCODE = """
const [rate, freq, seconds, done] = arguments;
import('./pcm.js').then(({ Pcm24kEncoder }) => {
  const encoder = new Pcm24kEncoder(rate);
  const out = [];
  const block = 128;  // an AudioWorklet render quantum
  for (let n0 = 0; n0 < rate * seconds; n0 += block) {
    const x = new Float32Array(block);
    for (let i = 0; i < block; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * freq * (n0 + i) / rate);
    for (const chunk of encoder.push(x)) out.push(chunk.length, ...chunk);
  }
  out.push(-1, ...encoder.flush());
  done(out);
}, (e) => done(String(e)));
"""


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_pcm_encoder_resamples_to_24k(chromium: Callable[..., Any], base_url: str, rate: int) -> None:
    driver = chromium()
    driver.get(f"{base_url}/playground/")
    driver.set_script_timeout(WAIT_S)

    def encode(freq: float) -> tuple[list[int], np.ndarray]:
        raw = driver.execute_async_script(ENCODE, rate, freq, 1.0)
        assert isinstance(raw, list), raw
        sizes, samples, i = [], [], 0
        while raw[i] != -1:  # full chunks, each prefixed by its length, then -1 and the rest
            sizes.append(raw[i])
            samples += raw[i + 1 : i + 1 + raw[i]]
            i += 1 + raw[i]
        samples += raw[i + 1 :]
        return sizes, np.array(samples, dtype=np.float64) / 32767

    sizes, tone = encode(1000.0)
    assert set(sizes) == {2400}  # 100 ms per append
    assert abs(tone.size - 24000 * (128 * -(-rate // 128)) / rate) <= 1
    steady = tone[200:-200]
    assert abs(np.sqrt(np.mean(steady**2)) - 0.5 / np.sqrt(2)) < 0.01  # a passband tone keeps its level
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size)))
    assert abs(np.argmax(spectrum) * 24000 / steady.size - 1000) < 5
    if rate > 24000:  # above the new Nyquist frequency: filtered out, not folded back as an alias
        _, alias = encode(16000.0)
        assert np.sqrt(np.mean(alias[200:-200] ** 2)) < 0.01


def test_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from browser import conftest

    monkeypatch.setattr(conftest, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        conftest._require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        conftest._require_browser()
