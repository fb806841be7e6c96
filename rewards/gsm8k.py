"""GSM8K verifier: exact numeric match of the final answer.

Gold: the number after the last "#### " of the gold solution text (a bare number is also accepted).
Prediction, by reward.gsm8k_extraction (the words of verl's GSM8K reward, method="strict" | "flexible"):
  strict    (the default) the content of the last <answer>...</answer> tag, which must be a number as
            a whole ("18 dollars" is wrong); no tag, no prediction: a completion cut off before its
            answer scores 0. verl's strict reads the number after "#### ", the format its prompt asks
            for; ours asks for the <answer> tag.
  flexible  the last number written anywhere in the completion, tag or not (verl's flexible).

Both go through `normalize_number`, the one normalisation used for GSM8K:
  1. remove all whitespace ("1 000" -> "1000"), all commas, read as thousand separators
     ("1,000" -> "1000"; grouping is not checked) and currency signs $, €, £ ("$18" -> "18",
     "-$3" -> "-3");
  2. drop one trailing period ("18." -> "18");
  3. what is left must be a plain decimal: optional sign, digits, optional fraction
     ("-3", "+4", "0.5", ".5", "5."); anything else (fractions "1/2", percent "50%",
     exponents "1e3", words) is not a number: None, which scores 0;
  4. the value is parsed exactly with decimal.Decimal and written back in canonical form:
     no leading zeros, no trailing zeros in the fraction, no trailing point, no "-0"
     ("18.00" -> "18", "2.50" -> "2.5", ".5" -> "0.5", "007" -> "7", "-0" -> "0").
Two numbers are equal when their canonical forms are equal, i.e. when they are equal as exact
decimals (so ".5" == "0.5" == "0.50", and "10" != "100").

It imports nothing of the project (a leaf of rewards/).
"""

import re
from decimal import Decimal

from reasoning_gym.utils import extract_answer

EXTRACTIONS = ("strict", "flexible")  # reward.gsm8k_extraction
CURRENCY_SIGNS = "$€£"
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)", re.ASCII)
# A number inside free text: optional sign and currency sign, digits with optional comma
# thousand separators, optional fraction. Not preceded by a letter, a digit or ".", so that
# "x2", the "-3" of "15-3" or the "5" of "1.5" is never a number of its own.
# ASCII digits only (re.ASCII), here and above.
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.])[+-]?[$€£]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[+-]?\.\d+",
    re.ASCII,
)


def normalize_number(text: str) -> str | None:
    """Canonical string of the decimal number written in `text`, or None if it is not one."""
    cleaned = re.sub(r"\s+", "", text)
    cleaned = cleaned.replace(",", "")
    for sign in CURRENCY_SIGNS:
        cleaned = cleaned.replace(sign, "")
    if cleaned.endswith("."):
        cleaned = cleaned[:-1]
    if not _PLAIN_DECIMAL.fullmatch(cleaned):
        return None
    canonical = f"{Decimal(cleaned):f}"  # exact: 'f' formatting never rounds
    if "." in canonical:
        canonical = canonical.rstrip("0").rstrip(".")
    return "0" if canonical == "-0" else canonical


def gold_number(answer_text: str) -> str | None:
    """Normalised gold number of a GSM8K answer: the text after the last '####', or the whole text."""
    _, _, final = answer_text.rpartition("####")
    return normalize_number(final)


def last_number(text: str) -> str | None:
    """The last number written anywhere in `text` (raw, not normalised), or None."""
    numbers = _NUMBER_IN_TEXT.findall(text)
    return numbers[-1] if numbers else None


def predicted_number(completion: str, extraction: str = "strict") -> str | None:
    """Normalised prediction: strict, the last <answer> tag's content; flexible, the last number anywhere."""
    raw = last_number(completion) if extraction == "flexible" else extract_answer(completion)
    return normalize_number(raw) if raw is not None else None


def score_gsm8k(completion: str, answer_text: str, extraction: str = "strict") -> float:
    """1.0 if the completion's predicted number (`extraction`) equals the gold number exactly, else 0.0."""
    gold = gold_number(answer_text)
    prediction = predicted_number(completion, extraction)
    return float(gold is not None and prediction == gold)
