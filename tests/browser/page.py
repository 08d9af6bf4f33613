"""The playground page in a browser (Selenium): what a user does and sees, by element id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from qwen_serve.testing.clips import speech_like

WAIT_S = 30.0

Items = list[tuple[str, str]]
"""(transcript, state) of each live item, in order."""


class Page:
    """The playground in a browser: what a user does and sees, by element id."""

    def __init__(self, driver: Any, base_url: str):
        self.driver = driver
        driver.get(f"{base_url}/")  # redirects to /playground/

    def el(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda _: condition(), message=f"timed out waiting for {what}"
        )

    def text(self, element_id: str) -> str:
        return str(self.driver.execute_script(f"return document.getElementById('{element_id}').textContent"))

    def sign_in(self, key: str, model: str, language: str = "") -> None:
        """Enter the key, load the models, choose `model` and `language` ("" = detect)."""
        from selenium.webdriver.support.ui import Select

        self.el("api-key").clear()
        self.el("api-key").send_keys(key)
        self.el("load-models").click()
        options = "return [...document.getElementById('model').options].map(o => o.value)"
        self.wait(lambda: model in self.driver.execute_script(options), "the model list")
        Select(self.el("model")).select_by_value(model)
        Select(self.el("language")).select_by_value(language)

    def transcribe(
        self,
        path: Path,
        response_format: str = "json",
        stream: bool = False,
        words: bool = False,
        confidence: bool = False,
        timeout: float = WAIT_S,
    ) -> None:
        """Choose the file and options, press Transcribe, wait until it is done or failed."""
        from selenium.webdriver.support.ui import Select

        Select(self.el("format")).select_by_value(response_format)
        for box, wanted in (("stream", stream), ("words", words), ("confidence", confidence)):
            if self.el(box).is_selected() != wanted:
                self.el(box).click()
        self.el("file").send_keys(str(path))
        self.el("transcribe").click()  # the status says "Transcribing…" before the click returns
        done = ("Done", "Failed", "Cancelled")
        self.wait(lambda: self.text("file-status").startswith(done), "the transcription", timeout)

    def shaded(self, selector: str) -> list[tuple[str, float, str, bool]]:
        """The token spans inside `selector`: (text, log-probability, title, marked unsure)."""
        script = (
            f"return [...document.querySelectorAll({selector!r} + ' span.token')]"
            ".map(s => [s.textContent, Number(s.dataset.logprob), s.title, s.classList.contains('unsure')])"
        )
        return [tuple(span) for span in self.driver.execute_script(script)]

    def live(
        self, stop_when: Callable[[Items], bool], timeout: float = WAIT_S, confidence: bool = False
    ) -> Items:
        """Start the microphone, press Stop once `stop_when(the items on the page)`, wait for the
        session to close; the items then."""
        if self.el("confidence").is_selected() != confidence:
            self.el("confidence").click()
        self.el("mic-start").click()
        self.wait(lambda: stop_when(live_items(self)), "the moment to stop", timeout)
        self.el("mic-stop").click()
        self.wait(lambda: self.text("live-status") == "Stopped.", "the session to close", timeout)
        assert self.text("live-error") == "", self.text("live-error")
        assert self.el("mic-start").is_enabled() and not self.el("mic-stop").is_enabled()
        return live_items(self)

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1100, max(800, int(height) + 40))
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path


def live_items(page: Page) -> Items:
    """(transcript, state) of each live item on the page."""
    script = "return [...document.querySelectorAll('#items li')].map(li => [li.querySelector('.text').textContent, li.querySelector('.state').textContent])"
    return [tuple(item) for item in page.driver.execute_script(script)]


def microphone_wav(path: Path, speech_s: float = 2.0) -> Path:
    """1 s of silence, speech, 2.5 s of silence, at 48 kHz (what Chromium's fake device runs at)."""
    z = lambda s: np.zeros(int(s * 16000), dtype=np.float32)  # noqa: E731
    pcm = np.concatenate([z(1.0), speech_like(speech_s, seed=8), z(2.5)])
    sf.write(path, soxr.resample(pcm, 16000, 48000), 48000, subtype="PCM_16")
    return path
