"""Progress: a bar on a terminal, plain lines in a log."""

from velcro.sw import progress as progress_module
from velcro.sw.progress import progress


def test_off_a_terminal_one_line_per_phase(capsys, monkeypatch):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    assert list(progress(range(5), desc="phase", unit="step")) == [0, 1, 2, 3, 4]
    bar = progress(total=10, desc="by hand", unit="img")
    bar.update(4)
    bar.set_postfix(C="0.25")
    bar.close()
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and "\r" not in err
    assert lines[0].startswith("[velcro] phase: 5 step, ")
    assert lines[1].startswith("[velcro] by hand: 4/10 img, C=0.25, ")


def test_long_phases_report_every_interval(capsys, monkeypatch):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setattr(progress_module, "QUIET_EVERY", 0.0)
    bar = progress(total=3, desc="long")
    for _ in range(3):
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.endswith(" ...") for line in lines] == [True, True, True, False]


def test_disabled_progress_prints_nothing(capsys):
    assert list(progress(range(3), enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
