"""The log files of `portfolio run`: one per process under <data>/logs, the last run's kept as .1, and with
--verbose followed live, each line prefixed with its process's name."""

import io

from portfolio import runlogs


def test_each_run_starts_a_fresh_log_and_keeps_the_last_runs_as_dot_one(tmp_path):
    with runlogs.open_log(tmp_path / "logs", "web") as log:
        log.write(b"first run\n")
    with runlogs.open_log(tmp_path / "logs", "web") as log:
        log.write(b"second run\n")
    assert (tmp_path / "logs" / "web.log").read_text() == "second run\n"
    assert (tmp_path / "logs" / "web.log.1").read_text() == "first run\n"


def test_the_follower_prints_complete_new_lines_prefixed_with_their_process(tmp_path):
    out = io.StringIO()
    follower = runlogs.Follower(out)
    web, beat = runlogs.open_log(tmp_path, "web"), runlogs.open_log(tmp_path, "beat")
    follower.follow("web", tmp_path / "web.log")
    follower.follow("beat", tmp_path / "beat.log")
    web.write(b"GET / 200\nGET /log")
    beat.write(b"sending due task\n")
    follower.pump()
    assert out.getvalue() == "web  | GET / 200\nbeat | sending due task\n"
    web.write(b"in/ 200\n")
    follower.close()
    assert out.getvalue().endswith("web  | GET /login/ 200\n")
    web.close()
    beat.close()


def test_the_tail_of_a_log_is_its_last_lines_and_nothing_for_a_missing_file(tmp_path):
    (tmp_path / "setup.log").write_text("".join(f"line {i}\n" for i in range(50)))
    assert runlogs.tail(tmp_path / "setup.log", lines=2) == "line 48\nline 49"
    assert runlogs.tail(tmp_path / "missing.log") == ""
