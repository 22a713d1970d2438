"""LiveConsole without Ray: fake trials and a fake clock. It prints nothing before
`every_s` has passed, then a progress line with an ETA from this session's rate,
and a line per running trial; 0 turns it off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from sal_ray.sweep.console import LiveConsole, clock_text  # noqa: E402
from sal_ray.sweep.plan import plan  # noqa: E402


def trial(tid, status, method="sal"):
    return SimpleNamespace(trial_id=tid, status=status, last_result={},
                           config={"dataset": "digits", "method": method, "lr": 0.1})


def console(every_s=15.0):
    p = plan("digits", ["sal", "bp"], {"lr": [0.1, 0.2]}, sampler="grid", seeds=2,
             fixed={"epochs": 5}, data="skip", name="c")
    now, lines = [0.0], []
    c = LiveConsole(p, every_s, lines.append, clock=lambda: now[0])
    return c, now, lines


def test_progress_and_eta_at_the_chosen_rate():
    c, now, lines = console()
    trials = [trial("a", "TERMINATED"), trial("b", "RUNNING"), trial("c", "PENDING", "bp"),
              trial("d", "PENDING", "bp")]
    c.on_step_end(0, trials)                      # the clock starts: 1 of 4 trials done
    c.on_trial_result(0, trials, trials[1], {"training_iteration": 5, "epoch": 5,
                                             "seed_index": 0, "val_acc": 0.9125})
    now[0] = 10.0
    c.on_step_end(1, trials)
    assert lines == []                            # before every_s: nothing
    now[0] = 20.0
    c.on_step_end(2, trials)
    # b is half done (5 of 2 seeds x 5 epochs) in 20 s: 0.5 of 4 trials per 20 s, 2.5 left
    assert lines == ["[0:20] 1/4 trials ended, 1 running; 38% of the sweep's epochs; ETA 1:40",
                     "    digits/sal     b  seed 1/2 epoch 5/5  val_acc 0.9125"]
    now[0] = 30.0
    c.on_step_end(3, trials)
    assert len(lines) == 2                        # the next one at 35 s
    assert clock_text(3725) == "1:02:05" and clock_text(59.6) == "1:00"


def test_zero_turns_it_off_and_no_epoch_yet_has_no_eta():
    c, now, lines = console(0)
    trials = [trial("b", "RUNNING")]
    for t in (0.0, 100.0):
        now[0] = t
        c.on_step_end(0, trials)
    assert lines == []
    c, now, lines = console(5)
    c.on_step_end(0, trials)
    now[0] = 6.0
    c.on_step_end(1, trials)
    assert lines == ["[0:06] 0/4 trials ended, 1 running; 0% of the sweep's epochs; "
                     "ETA — (no epoch done yet)", "    digits/sal     b  starting"]
