"""OpenAI's `language` (ISO-639-1) -> the language names Qwen3-ASR is prompted with."""

from __future__ import annotations

from collections.abc import Sequence

# ISO-639-1 codes of the languages Qwen3-ASR knows. Cantonese and Filipino
# have no two-letter code: `yue` and `fil` (and Tagalog's `tl`) stand in.
ISO_TO_MODEL: dict[str, str] = {
    "zh": "Chinese", "en": "English", "yue": "Cantonese", "ar": "Arabic", "de": "German",
    "fr": "French", "es": "Spanish", "pt": "Portuguese", "id": "Indonesian", "it": "Italian",
    "ko": "Korean", "ru": "Russian", "th": "Thai", "vi": "Vietnamese", "ja": "Japanese",
    "tr": "Turkish", "hi": "Hindi", "ms": "Malay", "nl": "Dutch", "sv": "Swedish", "da": "Danish",
    "fi": "Finnish", "pl": "Polish", "cs": "Czech", "fil": "Filipino", "tl": "Filipino",
    "fa": "Persian", "el": "Greek", "ro": "Romanian", "hu": "Hungarian", "mk": "Macedonian",
}  # fmt: skip


class LanguageError(ValueError):
    """The language is unknown or the model does not support it (message is client-safe)."""


def to_model_language(value: str, supported: Sequence[str]) -> str:
    """'en' / 'EN' / 'en-US' / 'English' -> 'English', if the model supports it."""
    raw = value.strip()
    code = raw.replace("_", "-").split("-")[0].lower()
    name = ISO_TO_MODEL.get(code)
    if name is None:  # also accept the model's own names ("english")
        name = next((s for s in supported if s.lower() == raw.lower()), None)
    if name is None or name not in supported:
        codes = sorted(c for c, n in ISO_TO_MODEL.items() if n in supported)
        raise LanguageError(
            f"Unsupported language '{value}'. Use an ISO-639-1 code the model supports: {', '.join(codes)}."
        )
    return name


def to_response_language(name: str | None) -> str:
    """'English' -> 'english', as OpenAI's verbose_json names languages."""
    return name.lower() if name else "unknown"
