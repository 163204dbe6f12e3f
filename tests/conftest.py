import copy
import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", category=FutureWarning)

from tiny_models import tiny_sd, tiny_sdxl, write_clip_tokenizer  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    import diffusers
    import transformers

    diffusers.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    logging.getLogger("concept_edit").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory) -> Path:
    return write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="session")
def _tiny_sd_session(clip_tokenizer_dir):
    return tiny_sd(clip_tokenizer_dir, seed=0)


@pytest.fixture
def sd(_tiny_sd_session):
    """A fresh copy of the tiny SD-1.x pipeline for each test (tests may edit it)."""
    return copy.deepcopy(_tiny_sd_session)


@pytest.fixture
def other_sd(clip_tokenizer_dir):
    """Same architecture, different weights: a different base model."""
    return tiny_sd(clip_tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def _tiny_sdxl_session(clip_tokenizer_dir):
    return tiny_sdxl(clip_tokenizer_dir, seed=0)


@pytest.fixture
def sdxl(_tiny_sdxl_session):
    return copy.deepcopy(_tiny_sdxl_session)


@pytest.fixture(scope="session")
def _shapes_session():
    from concept_edit.models import load_pipeline

    return load_pipeline("shapes", device="cpu")


@pytest.fixture
def shapes(_shapes_session):
    return copy.deepcopy(_shapes_session)


@pytest.fixture(scope="session")
def sd_folder(_tiny_sd_session, tmp_path_factory) -> Path:
    """The tiny SD pipeline saved as a diffusers folder, for the CLI and the loader."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    _tiny_sd_session.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def other_sd_folder(clip_tokenizer_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd-other")
    tiny_sd(clip_tokenizer_dir, seed=1).save_pretrained(folder, safe_serialization=True)
    return folder
