"""scripts/curves.py's seeds table: means and sample stds over seeds, and CtCAE - CAE++ seed by seed."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from curves import COLUMNS, _fill, _read_rows, _write_rows, caepp_baseline, seed_groups, seeds_table, write_report  # noqa: E402


def _rows(name: str, values: dict[int, float]) -> list[dict[str, str]]:
    return [{"run": name, "step": str(k), "val_ari_fg": str(v)} for k, v in values.items()]


RUNS = {
    "ctcae_small_pbias_s0": _rows("ctcae_small_pbias_s0", {1000: 0.266, 3000: 0.547}),
    "ctcae_small_pbias_s1": _rows("ctcae_small_pbias_s1", {1000: 0.450, 3000: 0.712}),
    "ctcae_small_pbias_s2": _rows("ctcae_small_pbias_s2", {1000: 0.349}),  # not yet at 3000
    "caepp_small_pbias_s0": _rows("caepp_small_pbias_s0", {1000: 0.255, 3000: 0.548}),
    "caepp_small_pbias_s1": _rows("caepp_small_pbias_s1", {1000: 0.395, 3000: 0.647}),
    "ctcae_small_s0": _rows("ctcae_small_s0", {1000: 0.061}),  # one seed: no row
}


def test_groups_split_the_seed_off_the_name():
    g = seed_groups(RUNS)
    assert set(g) == {"ctcae_small_pbias", "caepp_small_pbias", "ctcae_small"}
    assert g["ctcae_small_pbias"][2] == {1000: 0.349}


def test_table_means_stds_and_paired_differences_match_statistics():
    lines = seeds_table(RUNS, steps=(1000, 3000)).splitlines()
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:]}
    assert set(rows) == {"ctcae_small_pbias_s*", "caepp_small_pbias_s*", "ctcae_small_pbias − caepp_small_pbias, same seed"}
    ct = [0.266, 0.450, 0.349]
    assert f"{statistics.mean(ct):.3f} ± {statistics.stdev(ct):.3f} (n=3)" in rows["ctcae_small_pbias_s*"]
    assert f"{statistics.mean([0.547, 0.712]):.3f} ± {statistics.stdev([0.547, 0.712]):.3f} (n=2)" in rows["ctcae_small_pbias_s*"]
    d1000, d3000 = [0.266 - 0.255, 0.450 - 0.395], [0.547 - 0.548, 0.712 - 0.647]
    paired = rows["ctcae_small_pbias − caepp_small_pbias, same seed"]
    assert f"{statistics.mean(d1000):.3f} ± {statistics.stdev(d1000):.3f}, 2 of 2 > 0" in paired
    assert f"{statistics.mean(d3000):.3f} ± {statistics.stdev(d3000):.3f}, 1 of 2 > 0" in paired


def test_a_ctcae_group_with_its_own_contrastive_weight_pairs_with_the_caepp_group_without_it():
    assert caepp_baseline("ctcae_small_pbias_w1e3") == "caepp_small_pbias"
    assert caepp_baseline("ctcae_half_pbias_t0.1") == "caepp_half_pbias"
    assert caepp_baseline("ctcae_small_pbias_bf16") == "caepp_small_pbias_bf16"  # not a contrastive setting
    assert caepp_baseline("caepp_small_pbias") is None
    runs = dict(RUNS)
    runs["ctcae_small_pbias_w1e3_s0"] = _rows("ctcae_small_pbias_w1e3_s0", {3000: 0.600})
    runs["ctcae_small_pbias_w1e3_s1"] = _rows("ctcae_small_pbias_w1e3_s1", {3000: 0.700})
    lines = seeds_table(runs, steps=(3000,)).splitlines()
    paired = next(ln for ln in lines if ln.startswith("| ctcae_small_pbias_w1e3 − caepp_small_pbias, same seed"))
    d = [0.600 - 0.548, 0.700 - 0.647]
    assert f"{statistics.mean(d):.3f} ± {statistics.stdev(d):.3f}, 2 of 2 > 0" in paired


def test_a_tiny_negative_mean_prints_as_zero():
    runs = {f"cae_small_s{k}": _rows(f"cae_small_s{k}", {3000: v}) for k, v in enumerate([-1e-4, 0.0, -2e-5])}
    row = seeds_table(runs, steps=(3000,)).splitlines()[2]
    assert "| 0.000 ± 0.000 (n=3) |" in row and "-0.000" not in row


def test_fill_replaces_between_markers_and_appends_when_missing():
    assert _fill("a\n<!-- t -->\nold\n<!-- /t -->\nb", "t", "new") == "a\n<!-- t -->\nnew\n<!-- /t -->\nb"
    assert _fill("a\n", "t", "new") == "a\n\n<!-- t -->\nnew\n<!-- /t -->\n"


def _full_rows(name: str, values: dict[int, float]) -> list[dict[str, object]]:
    return [{"run": name, "step": k, "wall_s": 10.0 * k, "cpu_s": 9.0 * k, "loss": 0.1, "mse": 0.03, "contrastive": 0.0,
             "val_mse": 0.03, "val_ari_fg": v, "val_ari_full": 0.0, "val_phase_spread": 0.5} for k, v in values.items()]


def test_a_report_on_a_fresh_machine_keeps_the_committed_rows_of_runs_it_has_not_got(tmp_path):
    report_dir, run_root = tmp_path / "report", tmp_path / "runs"
    report_dir.mkdir()
    (report_dir / "runs.yaml").write_text("runs:\n  cae_half_s0: {profile: cae_tetrominoes_half}\n"
                                          "  cae_half_s1: {profile: cae_tetrominoes_half}\n"
                                          "  cae_half_s2: {profile: cae_tetrominoes_half}\n")
    # committed: s0 (trained elsewhere, no files here) and s1 to step 500 (continued here to 1000)
    _write_rows(report_dir / "curves.csv", _full_rows("cae_half_s0", {500: 0.11, 1000: 0.12})
                + _full_rows("cae_half_s1", {500: 0.21}))
    (run_root / "cae_half_s1").mkdir(parents=True)
    _write_rows(run_root / "cae_half_s1" / "curve.csv", _full_rows("cae_half_s1", {500: 0.21, 1000: 0.25}))
    readme = write_report(run_root, report_dir)
    rows = _read_rows(report_dir / "curves.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["run"], r["step"], float(r["val_ari_fg"])) for r in rows] == [
        ("cae_half_s0", "500", 0.11), ("cae_half_s0", "1000", 0.12),
        ("cae_half_s1", "500", 0.21), ("cae_half_s1", "1000", 0.25)]
    text = readme.read_text()
    assert "| cae_half_s0 | 1000 |" in text and "| cae_half_s1 | 1000 |" in text and "cae_half_s2 |" not in text
    assert (report_dir / "curves.png").stat().st_size > 10_000


def test_the_table_shows_the_colour_control_where_it_was_logged(tmp_path):
    report_dir, run_root = tmp_path / "report", tmp_path / "runs"
    report_dir.mkdir()
    (report_dir / "runs.yaml").write_text("runs:\n  ctcae_half_s0: {profile: ctcae_tetrominoes_half}\n"
                                          "  ctcae_half_s1: {profile: ctcae_tetrominoes_half}\n")
    old = _full_rows("ctcae_half_s0", {500: 0.31})  # evaluated before the control was logged
    new = [{**r, "val_ari_fg_colour": 0.25} for r in _full_rows("ctcae_half_s1", {500: 0.41})]
    _write_rows(report_dir / "curves.csv", old + new)
    text = write_report(run_root, report_dir).read_text()
    assert "| 0.310 (–) |" in text and "| 0.410 (0.250) |" in text
    rows = _read_rows(report_dir / "curves.csv")
    assert [r["val_ari_fg_colour"] for r in rows] == ["", "0.25"]
