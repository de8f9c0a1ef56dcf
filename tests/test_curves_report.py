"""scripts/curves.py's seeds table: means and sample stds over seeds, and CtCAE - CAE++ seed by seed."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from curves import COLUMNS, _fill, _read_rows, _write_rows, caepp_baseline, phase_gain, seed_groups, seeds_table, write_report  # noqa: E402


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
    assert set(rows) == {"ctcae_small_pbias_s*", "caepp_small_pbias_s*", "ctcae_small_pbias − caepp_small_pbias, same seed",
                         "ctcae_small_pbias − caepp_small_pbias, in stds"}
    ct = [0.266, 0.450, 0.349]
    assert f"{statistics.mean(ct):.3f} ± {statistics.stdev(ct):.3f} (n=3)" in rows["ctcae_small_pbias_s*"]
    assert f"{statistics.mean([0.547, 0.712]):.3f} ± {statistics.stdev([0.547, 0.712]):.3f} (n=2)" in rows["ctcae_small_pbias_s*"]
    d1000, d3000 = [0.266 - 0.255, 0.450 - 0.395], [0.547 - 0.548, 0.712 - 0.647]
    paired = rows["ctcae_small_pbias − caepp_small_pbias, same seed"]
    assert f"{statistics.mean(d1000):.3f} ± {statistics.stdev(d1000):.3f}, 2 of 2 > 0" in paired
    assert f"{statistics.mean(d3000):.3f} ± {statistics.stdev(d3000):.3f}, 1 of 2 > 0" in paired


def test_the_gap_in_stds_reads_the_issue_target_unpaired_and_paired():
    lines = seeds_table(RUNS, steps=(1000, 3000)).splitlines()
    row = next(ln for ln in lines if ln.startswith("| ctcae_small_pbias − caepp_small_pbias, in stds"))
    ct, pp = [0.266, 0.450, 0.349], [0.255, 0.395]
    unpaired = (statistics.mean(ct) - statistics.mean(pp)) / max(statistics.stdev(ct), statistics.stdev(pp))
    d = [0.266 - 0.255, 0.450 - 0.395]
    paired = statistics.mean(d) / statistics.stdev(d)
    cells = row.strip("| ").split(" | ")
    assert cells[2] == f"{unpaired:+.1f} unpaired, {paired:+.1f} paired"
    assert cells[2].startswith("+0.") and paired > 1  # the paired test can pass where the unpaired does not
    d3000 = [0.547 - 0.548, 0.712 - 0.647]
    u3000 = (statistics.mean([0.547, 0.712]) - statistics.mean([0.548, 0.647])) / statistics.stdev([0.547, 0.712])
    assert cells[3] == f"{u3000:+.1f} unpaired, {statistics.mean(d3000) / statistics.stdev(d3000):+.1f} paired"


def test_the_phase_gain_table_takes_only_rows_with_the_colour_control():
    def rows(name, values):  # step: (ARI-FG, colour alone or "")
        return [{"run": name, "step": str(k), "val_ari_fg": str(a), "val_ari_fg_colour": str(c)} for k, (a, c) in values.items()]

    runs = {
        "ctcae_x_s0": rows("ctcae_x_s0", {1000: (0.30, ""), 3000: (0.70, 0.60)}),
        "ctcae_x_s1": rows("ctcae_x_s1", {1000: (0.40, ""), 3000: (0.65, 0.70)}),
        "caepp_x_s0": rows("caepp_x_s0", {1000: (0.35, ""), 3000: (0.62, 0.61)}),
        "caepp_x_s1": rows("caepp_x_s1", {3000: (0.66, 0.66)}),
        "caepp_x_s2": rows("caepp_x_s2", {1000: (0.50, "")}),  # no control at all: not a seed here
    }
    assert phase_gain(runs["ctcae_x_s0"][0]) is None and abs(phase_gain(runs["ctcae_x_s0"][1]) - 0.10) < 1e-12
    assert seed_groups(runs, phase_gain)["caepp_x"].keys() == {0, 1}
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in seeds_table(runs, steps=(1000, 3000), value=phase_gain).splitlines()[2:]}
    ct = lines["ctcae_x_s*"].strip("| ").split(" | ")
    assert ct[1:] == ["0,1", "–", f"{statistics.mean([0.10, -0.05]):.3f} ± {statistics.stdev([0.10, -0.05]):.3f} (n=2)"]
    paired = lines["ctcae_x − caepp_x, same seed"].strip("| ").split(" | ")
    d = [0.10 - 0.01, -0.05 - 0.0]
    assert paired[3] == f"{statistics.mean(d):.3f} ± {statistics.stdev(d):.3f}, 1 of 2 > 0"


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


def test_the_table_gives_where_the_phases_first_add_over_colour_and_the_most_they_add(tmp_path):
    report_dir, run_root = tmp_path / "report", tmp_path / "runs"
    report_dir.mkdir()
    (report_dir / "runs.yaml").write_text("runs:\n  caepp_small_s0: {profile: caepp_tetrominoes_small}\n"
                                          "  caepp_small_s1: {profile: caepp_tetrominoes_small}\n")
    colour = {500: 0.05, 1000: 0.50, 1500: 0.60, 2000: 0.70}  # s0 earns 0.0, 0.04, 0.08, 0.06 over colour
    s0 = [{**r, "val_ari_fg_colour": colour[r["step"]]}
          for r in _full_rows("caepp_small_s0", {500: 0.05, 1000: 0.54, 1500: 0.68, 2000: 0.76})]
    s1 = [{**r, "val_ari_fg_colour": r["val_ari_fg"]} for r in _full_rows("caepp_small_s1", {500: 0.3, 1000: 0.7})]
    _write_rows(report_dir / "curves.csv", s0 + s1)
    lines = {ln.split(" | ")[0].lstrip("| "): ln.strip("| ").split(" | ")
             for ln in write_report(run_root, report_dir).read_text().splitlines() if ln.startswith("| caepp_small_s")}
    assert lines["caepp_small_s0"][-2:] == [f"1500 ({9.0 * 1500 / 3600:.2f})", "+0.080 (1500)"]
    assert lines["caepp_small_s1"][-2:] == ["–", "+0.000 (500)"]  # ARI-FG from colour alone: no grouping by phase


def test_every_committed_run_makes_a_config_on_its_device():
    """Each run of reports/curves/runs.yaml resolves to a valid config; ``device`` (default cpu)
    and ``batch_size`` reach train."""
    from curves import load_runs, run_config

    runs = load_runs()
    configs = {name: run_config(name, run, 3000) for name, run in runs.items()}
    assert configs["caepp_small_s0"].train.device == "cpu" and configs["caepp_small_s0"].train.batch_size == 32
    gpu = configs["ctcae_paper_pbias_gpu_s1"]
    assert gpu.train.device == "cuda" and gpu.train.batch_size == 64 and gpu.train.seed == 1
    assert gpu.model.enc_channels == (128, 128, 256, 256, 256) and gpu.model.phase_bias_init == 3.14159
    assert all(c.train.steps == 3000 and c.name == n for n, c in configs.items())
