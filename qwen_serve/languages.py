"""The languages Qwen3-ASR knows, once: the model's names and the ISO-639-1 codes clients send.

    SUPPORTED_LANGUAGES   the names the official package accepts ("English", ...), in its order
    ISO_TO_MODEL          OpenAI's `language` (ISO-639-1) -> that name
    to_model_language     what a client sent ("en", "en-US", "English") -> the name, if the model has it
    forced_language       OpenAI's `language` and `languages` (possible languages) -> the name to force
    to_language_codes     a transcript's language ("Chinese,English") -> OpenAI's `languages` codes

The engine prompts with the names (`language English<asr_text>`), the ingress
maps a request's code to a name before a model is woken, and a checkpoint
whose config.json lacks `support_languages` is taken to support all of them.
Everything imports the table from here; nothing heavy is imported, so the
engine and the ingress can both depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence

# (model's name, ISO-639-1 codes), in the order of the official package
# (qwen_asr.inference.utils). Cantonese and Filipino have no two-letter code:
# `yue` and `fil` (and Tagalog's `tl`) stand in.
LANGUAGE_CODES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Chinese", ("zh",)), ("English", ("en",)), ("Cantonese", ("yue",)), ("Arabic", ("ar",)),
    ("German", ("de",)), ("French", ("fr",)), ("Spanish", ("es",)), ("Portuguese", ("pt",)),
    ("Indonesian", ("id",)), ("Italian", ("it",)), ("Korean", ("ko",)), ("Russian", ("ru",)),
    ("Thai", ("th",)), ("Vietnamese", ("vi",)), ("Japanese", ("ja",)), ("Turkish", ("tr",)),
    ("Hindi", ("hi",)), ("Malay", ("ms",)), ("Dutch", ("nl",)), ("Swedish", ("sv",)),
    ("Danish", ("da",)), ("Finnish", ("fi",)), ("Polish", ("pl",)), ("Czech", ("cs",)),
    ("Filipino", ("fil", "tl")), ("Persian", ("fa",)), ("Greek", ("el",)), ("Romanian", ("ro",)),
    ("Hungarian", ("hu",)), ("Macedonian", ("mk",)),
)  # fmt: skip

SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(name for name, _ in LANGUAGE_CODES)
"""The model's language names, as the prompt spells them."""

ISO_TO_MODEL: dict[str, str] = {code: name for name, codes in LANGUAGE_CODES for code in codes}
"""ISO-639-1 code (and `yue`, `fil`, `tl`) -> the model's name."""

MODEL_TO_ISO: dict[str, str] = {name: codes[0] for name, codes in LANGUAGE_CODES}
"""The model's name -> the code responses give (the first listed: `fil` for Filipino)."""


class LanguageError(ValueError):
    """The language is unknown, the model does not support it, or `language` and `languages` do not
    fit together (message is client-safe; `param`: the field at fault)."""

    def __init__(self, message: str, param: str = "language"):
        super().__init__(message)
        self.param = param


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


def forced_language(language: str | None, languages: Sequence[str], supported: Sequence[str]) -> str | None:
    """The name of the language to force, from OpenAI's `language` and `languages` (the audio's
    possible languages): `language` if given (it must be among `languages`, if those are given too),
    else the one language `languages` names; None (the model detects it) when neither is given.

    Qwen3-ASR either is told the language or detects it among all it knows: several possible
    languages cannot be enforced, so they are refused rather than ignored (LanguageError)."""
    names: list[str] = []
    for value in languages:
        try:
            name = to_model_language(value, supported)
        except LanguageError as e:
            raise LanguageError(str(e), param="languages") from None
        if name not in names:
            names.append(name)
    if language:
        name = to_model_language(language, supported)
        if names and name not in names:
            raise LanguageError(f"'language' ({language}) is not among 'languages'.", param="languages")
        return name
    if len(names) > 1:
        raise LanguageError(
            "Several possible languages are not supported: the model is either told the language or "
            "detects it among all it knows. Give one code in 'language' (or 'languages'), or none.",
            param="languages",
        )
    return names[0] if names else None


def to_language_codes(name: str | None) -> list[str]:
    """'English' -> ['en']; 'Chinese,English' (long audio whose chunks differ) -> ['zh', 'en'];
    None (no speech, or a language without a code) -> []: OpenAI's `languages: [{code}]`."""
    codes: list[str] = []
    for part in (name or "").split(","):
        code = MODEL_TO_ISO.get(part.strip())
        if code and code not in codes:
            codes.append(code)
    return codes


def to_response_language(name: str | None) -> str:
    """'English' -> 'english', as OpenAI's verbose_json names languages."""
    return name.lower() if name else "unknown"
