"""Shared test setup: one torch thread (2-core machines), no network, a private model cache."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO / "data" / "gsm8k"  # carried in the repository (data/gsm8k/README.md)


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "test.jsonl").exists():
        pytest.fail(f"GSM8K data not found at {GSM8K_DIR} (the repository carries it: data/gsm8k/README.md)")
    return GSM8K_DIR
