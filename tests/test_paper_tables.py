"""The paper's tables from a run's summary (gftrepro.paper_tables): each table has the run's entries that
the paper's table has, the paper's transcribed numbers beside ours, and a table without entries is left out."""

from gftrepro import paper_tables


def row(model, pass1, seeds=3, **extra):
    r = {"model": model, "seeds": seeds, "pass@1": (pass1, 0.01), "pass@32": (min(1.0, pass1 + 0.4), 0.02),
         "probe": (0.7, 0.01), "pass@16": (pass1 + 0.3, 0.02)}
    if model != "base":
        r |= {"kl_to_base": (0.05, 0.001), "entropy": (0.1, 0.002), "rectified_share": (0.2, 0.01)}
    return r | extra


def test_every_table_with_entries_and_the_papers_numbers_beside(tmp_path):
    summary = [row("base", 0.23), row("sft", 0.36), row("dft", 0.3), row("gft-online", 0.33, tau=0.7),
               row("gft-no-dcr-online", 0.31), row("grpo", 0.30),
               row("gft-online@ratio=8:0", 0.2), row("gft-online@ratio=2:6", 0.34), row("gft-online@ratio=0:8", 0.29),
               row("gft-online@tau=0.1", 0.32), row("gft-online@tau=0.9", 0.31), row("sft:grpo", 0.38)]
    text = paper_tables.tables(summary)
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Figure 4", "Figure 5", "Figure 6"):
        assert f"## {title}" in text, title
    assert "| sft | 36.0 ± 1.0 | 76.0 ± 2.0 | 70.0 ± 1.0 |" in text
    assert "| 2:6 | gft-online@ratio=2:6 | 34.0 ± 1.0 |" in text and "45.59 |" in text  # the paper's avg@16
    assert "| 4:4 | gft-online | 33.0 ± 1.0 |" in text  # the plain entry is the paper's 1:3:4 = 4:4
    assert "| 0.1 | gft-online@tau=0.1 | 32.0 ± 1.0 | 20.0 ± 1.0 |" in text
    assert "| gft-online | 73.0 ± 2.0 | 62.16 |" in text  # Table 4: pass@32 beside the paper's pass@128 avg
    assert "| base | 70.0 ± 1.0 | 74.5 |" in text  # Table 3: the probe beside the paper's three-benchmark mean
    paper_tables.write(tmp_path, summary)
    assert (tmp_path / "paper-tables.md").read_text() == text
    assert (tmp_path / "tau.png").stat().st_size > 0 and (tmp_path / "ratio.png").stat().st_size > 0


def test_tables_without_entries_are_left_out(tmp_path):
    summary = [row("base", 0.23, seeds=1), row("sft", 0.36, seeds=1), row("gft", 0.2, seeds=1, tau=0.7)]
    text = paper_tables.tables(summary)
    assert "## Table 1" in text and "## Table 3" in text
    for title in ("Table 2", "Table 5", "Figure 4", "Figure 6"):
        assert f"## {title}" not in text, title
    paper_tables.write(tmp_path, summary)
    assert not (tmp_path / "tau.png").exists() and not (tmp_path / "ratio.png").exists()
