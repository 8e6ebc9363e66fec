"""The console ETA: steady across log lines when one step is slow (a checkpoint save) or the first is."""

from internlm.monitor.progress import StepTimer, format_duration


def test_eta_is_the_mean_pace_and_ignores_the_start_up_step():
    now = [0.0]
    timer = StepTimer(100, clock=lambda: now[0])
    assert timer.eta(0) == "?"
    etas = []
    for step in range(1, 41):
        # the first step carries 60 s of start-up, step 20 a 30 s checkpoint save, every other step takes 2 s
        now[0] += 60.0 if step == 1 else 32.0 if step == 20 else 2.0
        timer.tick()
        if step >= 2:
            etas.append((step, timer.eta(step)))
    assert etas[0] == (2, format_duration(2.0 * 98))  # start-up not counted
    assert etas[-1] == (40, format_duration((38 * 2.0 + 32.0) / 39 * 60))  # the save spread over all 39 steps
    seconds = {s: (lambda h_m_s: sum(int(x) * 60 ** i for i, x in enumerate(reversed(h_m_s.split(":")))))(e)
               for s, e in etas}
    for step in range(20, 40):  # consecutive lines after the save stay within 6% of each other
        assert abs(seconds[step + 1] - seconds[step]) <= 0.06 * seconds[step], (step, seconds[step], seconds[step + 1])
