"""Benchmark readers on tiny fake layouts (LSOTB-TIR, PTB-TIR, cmd-ray synthetic)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from pydantic import BaseModel

from cmd_ray.config import EvaluationConfig
from cmd_ray.evaluation.benchmarks import (
    BENCHMARK_READERS,
    BENCHMARKS,
    LSOTB_ATTRIBUTES,
    PTB_ATTRIBUTES,
    BenchmarkReader,
    LsotbOptions,
    Sequence,
    benchmark_options,
    parse_ground_truth,
    read_benchmark,
    read_lsotb_tir,
    read_ptb_tir,
    read_synthetic,
)


def _frames(img_dir: Path, n: int, digits: int) -> None:
    img_dir.mkdir(parents=True)
    for i in reversed(range(1, n + 1)):
        (img_dir / f"{i:0{digits}d}.jpg").write_bytes(b"")


def _gt_lines(n: int, sep: str = ",") -> str:
    return "".join(sep.join(str(v) for v in (i + 1, 2, 10, 20)) + "\n" for i in range(n))


def _lsotb(root: Path) -> None:
    (root / "anno" / "att").mkdir(parents=True)
    # cat_D_001 and airplane_H_001: ground truth in anno/<seq>.txt
    for name, n in (("cat_D_001", 3), ("airplane_H_001", 12)):
        _frames(root / name / "img", n, 4)
        (root / "anno" / f"{name}.txt").write_text(_gt_lines(n))
    flags = [0] * 16
    flags[1] = flags[8] = flags[15] = 1  # occlusion, thermal crossover, hand-held
    (root / "anno" / "att" / "airplane_H_001.txt").write_text(",".join(map(str, flags)) + "\n")
    # person_S_002: ground truth in <seq>/groundtruth_rect.txt, tab-separated
    _frames(root / "person_S_002" / "img", 2, 4)
    (root / "person_S_002" / "groundtruth_rect.txt").write_text(_gt_lines(2, "\t"))


def test_lsotb_both_layouts_and_subsets(tmp_path: Path) -> None:
    _lsotb(tmp_path)
    all120 = read_lsotb_tir(tmp_path, subset="120")
    assert [s.name for s in all120] == ["airplane_H_001", "cat_D_001", "person_S_002"]
    paper = read_lsotb_tir(tmp_path)  # default: the paper's 119 (no cat_D_001)
    assert [s.name for s in paper] == ["airplane_H_001", "person_S_002"]
    air = paper[0]
    assert [Path(p).name for p in air.frames] == [f"{i:04d}.jpg" for i in range(1, 13)]
    assert air.ground_truth.dtype == np.float64 and air.ground_truth.shape == (12, 4)
    np.testing.assert_array_equal(air.ground_truth[11], [12, 2, 10, 20])
    assert tuple(air.attributes) == LSOTB_ATTRIBUTES
    assert [k for k, v in air.attributes.items() if v] == ["occlusion", "thermal_crossover", "hand_held"]
    person = paper[1]
    np.testing.assert_array_equal(person.ground_truth, [[1, 2, 10, 20], [2, 2, 10, 20]])
    assert person.attributes == {}
    assert [s.name for s in read_lsotb_tir(tmp_path, "120", sequences=["cat_D_001"])] == ["cat_D_001"]
    with pytest.raises(ValueError, match="subset"):
        read_lsotb_tir(tmp_path, subset="all")  # type: ignore[arg-type]


def test_lsotb_errors_name_the_file(tmp_path: Path) -> None:
    _lsotb(tmp_path)
    bad = tmp_path / "anno" / "cat_D_001.txt"
    bad.write_text("1,2,10,20\n1,2,10\n3,2,10,20\n")
    with pytest.raises(ValueError, match=r"cat_D_001\.txt:2"):
        read_lsotb_tir(tmp_path, "120")
    bad.write_text(_gt_lines(2))  # 3 frames on disk
    with pytest.raises(ValueError, match=r"cat_D_001\.txt: 2 ground-truth boxes but 3 frames"):
        read_lsotb_tir(tmp_path, "120")
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=r"groundtruth_rect\.txt"):
        read_lsotb_tir(tmp_path, "120")
    (tmp_path / "anno" / "att" / "person_S_002.txt").write_text("0,1,0\n")
    with pytest.raises(ValueError, match=r"person_S_002\.txt: expected 16 attribute flags"):
        read_lsotb_tir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_lsotb_tir(tmp_path, sequences=["nope"])


def test_lsotb_frame_gap_is_an_error(tmp_path: Path) -> None:
    _lsotb(tmp_path)
    (tmp_path / "airplane_H_001" / "img" / "0005.jpg").unlink()
    with pytest.raises(ValueError, match="missing \\[5\\]"):
        read_lsotb_tir(tmp_path)


def test_ground_truth_separators_and_nan(tmp_path: Path) -> None:
    p = tmp_path / "gt.txt"
    p.write_text("1,2,3,4\n5\t6\t7\t8\n9 10 11 12\n\n13, 14, 15, 16\nNaN,NaN,NaN,NaN\n")
    gt = parse_ground_truth(p)
    np.testing.assert_array_equal(gt[:4], np.arange(1, 17).reshape(4, 4))
    assert np.isnan(gt[4]).all()
    p.write_text("1,2,3,x\n")
    with pytest.raises(ValueError, match=r"gt\.txt:1"):
        parse_ground_truth(p)
    p.write_text("")
    with pytest.raises(ValueError, match="no boxes"):
        parse_ground_truth(p)


def test_ptb_tir_eight_digit_frames(tmp_path: Path) -> None:
    (tmp_path / "tiranno" / "att").mkdir(parents=True)
    _frames(tmp_path / "tirsequences" / "classroom1" / "img", 3, 8)
    (tmp_path / "tiranno" / "classroom1.txt").write_text(_gt_lines(3, " "))
    (tmp_path / "tiranno" / "att" / "classroom1.txt").write_text("1,0,1,0,0,0,0,0,0,1\n")
    (seq,) = read_ptb_tir(tmp_path)
    assert seq.name == "classroom1"
    assert [Path(p).name for p in seq.frames] == ["00000001.jpg", "00000002.jpg", "00000003.jpg"]
    assert Path(seq.frames[0]).parent == tmp_path / "tirsequences" / "classroom1" / "img"
    assert seq.ground_truth.shape == (3, 4)
    assert tuple(seq.attributes) == PTB_ATTRIBUTES
    # The toolkit's order: the 1st, 3rd and 10th flags are deformation, scale variation and thermal crossover.
    assert [k for k, v in seq.attributes.items() if v] == ["deformation", "scale_variation", "thermal_crossover"]
    assert PTB_ATTRIBUTES[1] == "occlusion" and PTB_ATTRIBUTES[4] == "low_resolution"
    assert PTB_ATTRIBUTES[7] == "out_of_view" and PTB_ATTRIBUTES[8] == "intensity_variation"


def test_ptb_tir_rejects_four_digit_frames(tmp_path: Path) -> None:
    _frames(tmp_path / "tirsequences" / "s" / "img", 2, 4)
    (tmp_path / "tiranno").mkdir()
    (tmp_path / "tiranno" / "s.txt").write_text(_gt_lines(2))
    with pytest.raises(FileNotFoundError, match="8-digit"):
        read_ptb_tir(tmp_path)


def test_synthetic_with_and_without_attributes(tmp_path: Path) -> None:
    for name in ("synth_tir_000", "synth_tir_001"):
        _frames(tmp_path / name / "img", 4, 4)
        (tmp_path / name / "groundtruth_rect.txt").write_text(_gt_lines(4))
    (tmp_path / "synth_tir_000" / "attributes.txt").write_text("occlusion,1\nfast_motion,0\n")
    (tmp_path / "README.txt").write_text("not a sequence")
    seqs = read_synthetic(tmp_path)
    assert [s.name for s in seqs] == ["synth_tir_000", "synth_tir_001"]
    assert seqs[0].attributes == {"occlusion": True, "fast_motion": False}
    assert seqs[1].attributes == {}
    assert len(seqs[0]) == 4
    (tmp_path / "synth_tir_001" / "attributes.txt").write_text("occlusion,2\n")
    with pytest.raises(ValueError, match=r"attributes\.txt"):
        read_synthetic(tmp_path)
    (tmp_path / "synth_tir_001" / "attributes.txt").unlink()
    (tmp_path / "synth_tir_001" / "groundtruth_rect.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"synth_tir_001.groundtruth_rect\.txt"):
        read_synthetic(tmp_path, sequences=["synth_tir_001"])


def test_synthetic_reader_reads_what_cmd_ray_synth_writes(tmp_path: Path) -> None:
    from cmd_ray.config import SynthConfig
    from cmd_ray.data.synthetic import ATTRIBUTES, write_synthetic_dataset

    cfg = SynthConfig(
        num_pairs=1, image_width=64, image_height=48, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=3
    )
    write_synthetic_dataset(str(tmp_path), cfg, progress=False, workers=1, io_workers=1)
    seqs = read_synthetic(tmp_path / "tir_sequences")
    assert [s.name for s in seqs] == ["synth_tir_000", "synth_tir_001"]
    assert all(len(s) == 3 and s.ground_truth.shape == (3, 4) for s in seqs)
    assert all(tuple(s.attributes) == tuple(ATTRIBUTES) for s in seqs)


# ------------------------------------------------------------------------------------------------- the registry


def test_registry_dispatches_with_options(tmp_path: Path) -> None:
    assert BENCHMARKS == tuple(BENCHMARK_READERS) == ("synthetic", "lsotb", "ptb")
    _lsotb(tmp_path)
    names = lambda seqs: [s.name for s in seqs]  # noqa: E731
    assert names(read_benchmark("lsotb", tmp_path)) == ["airplane_H_001", "person_S_002"]  # default: the 119 set
    full = read_benchmark("lsotb", tmp_path, options={"subset": "120"})
    assert names(full) == ["airplane_H_001", "cat_D_001", "person_S_002"]
    assert names(read_benchmark("lsotb", tmp_path, options=LsotbOptions(subset="120"))) == names(full)
    with pytest.raises(ValueError, match="subset"):
        read_benchmark("lsotb", tmp_path, options={"subset": "118"})
    with pytest.raises(ValueError, match="unknown benchmark 'otb'"):
        read_benchmark("otb", tmp_path)
    with pytest.raises(ValueError, match="takes no options"):
        read_benchmark("synthetic", tmp_path, options={"subset": "120"})
    # One mapping of every known option serves every benchmark: each takes what its model declares.
    assert benchmark_options("lsotb", {"subset": "120", "other": 1}) == LsotbOptions(subset="120")
    assert benchmark_options("ptb", {"subset": "120"}) is None


def test_a_benchmark_is_one_function_and_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FlatOptions(BaseModel):
        digits: int = 4

    def read_flat(root, sequences=None, endpoint_url=None, digits=4) -> list[Sequence]:
        """A layout of one folder per sequence, frames with ``digits`` digits, ``gt.txt`` beside them."""
        out = []
        for d in sorted(Path(root).iterdir()):
            if sequences is None or d.name in sequences:
                frames = tuple(str(d / f"{i:0{digits}d}.png") for i in range(1, 3))
                out.append(Sequence(d.name, frames, parse_ground_truth(d / "gt.txt", endpoint_url)))
        return out

    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gt.txt").write_text(_gt_lines(2))
    monkeypatch.setitem(BENCHMARK_READERS, "flat", BenchmarkReader(read_flat, FlatOptions, "a test layout"))
    seqs = read_benchmark("flat", tmp_path, ["a"], options={"digits": 6})
    assert [s.name for s in seqs] == ["a"] and Path(seqs[0].frames[1]).name == "000002.png"
    assert benchmark_options("flat", {"digits": 5, "subset": "120"}) == FlatOptions(digits=5)


def test_config_accepts_exactly_the_registered_benchmarks() -> None:
    annotation = EvaluationConfig.model_fields["benchmark"].annotation
    allowed = get_args(annotation) or tuple(BENCHMARK_READERS)  # a Literal, or a str checked against the registry
    assert set(allowed) == set(BENCHMARK_READERS)
