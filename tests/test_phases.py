"""Phase timings: ``pipeline.phases`` and the phases calibrate and quantize report."""

from __future__ import annotations

import time

from pipeline import phases, results, stages
from pipeline.calibration.calibrator import STATISTICS
from pipeline.calibration.inputs import CALIBRATION_DATA
from pipeline.layout import Layout
from pipeline.results import QuantizeResult


def test_a_phase_inside_another_is_taken_out_of_it_and_repeats_add_up():
    with phases.collecting() as collected:
        with phases.timed("outer"):
            time.sleep(0.02)
            for _ in range(2):
                with phases.timed("inner"):
                    time.sleep(0.03)
    seconds = {p.name: p.seconds for p in collected.phases()}
    assert list(seconds) == ["outer", "inner"]  # in the order they first started
    assert 0.06 <= seconds["inner"] < 0.2
    assert 0.02 <= seconds["outer"] < 0.06  # its own time only: the inner phases are not counted twice
    cpu = {p.name: p.cpu_seconds for p in collected.phases()}
    assert cpu["inner"] < 0.03  # asleep: wall time, no CPU time


def test_cpu_seconds_count_a_busy_phase():
    with phases.collecting() as collected:
        with phases.timed("busy"):
            end = time.process_time() + 0.05
            while time.process_time() < end:
                pass
    (busy,) = collected.phases()
    assert busy.cpu_seconds >= 0.05 and busy.seconds >= 0.05
    assert "busy" in phases.describe(collected.phases()) and "CPU" in phases.describe(collected.phases())


def test_nothing_is_collected_outside_collecting_and_timed_each_times_the_source():
    with phases.timed("nowhere"):
        pass  # no collector: nothing to record, and no error

    def slow_source():
        for i in range(3):
            time.sleep(0.01)
            yield i

    with phases.collecting() as collected:
        with phases.timed("consumer"):
            assert list(phases.timed_each("source", slow_source())) == [0, 1, 2]
    seconds = {p.name: p.seconds for p in collected.phases()}
    assert seconds["source"] >= 0.03 and seconds["consumer"] < seconds["source"]
    assert "nowhere" not in seconds


def test_calibrate_and_quantize_report_their_phases(make_config, tmp_path, capsys):
    cfg = make_config()
    stages.run("export", cfg, root=tmp_path)
    calibrated = stages.run("calibrate", cfg, root=tmp_path)
    names = [p.name for p in calibrated.phases]
    assert not calibrated.reused and {STATISTICS, CALIBRATION_DATA, "auto: candidate ranges"} <= set(names)
    assert all(p.seconds >= 0 for p in calibrated.phases)
    assert "calibrate phases, " in capsys.readouterr().err
    again = stages.run("calibrate", cfg, root=tmp_path)
    assert again.reused and STATISTICS not in [p.name for p in again.phases]  # the fresh cache was read

    stages.run("quantize", cfg, root=tmp_path)
    saved = results.load(QuantizeResult, Layout.of(cfg, tmp_path))
    quantized = {p.name for p in saved.phases}
    assert {"inputs", "accuracy pass", "file writes"} <= quantized
    assert any(name.startswith("graph building: ") for name in quantized)
    assert STATISTICS not in quantized  # the cache calibrate wrote was reused
    assert "quantize phases, " in capsys.readouterr().err


def test_the_phase_that_grows_the_peak_rss_is_named():
    import os
    import resource

    import numpy as np

    # The peak is the process's high-water mark: past it by 80 MiB, whatever ran in this process before.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    resident = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with phases.collecting() as collected:
        with phases.timed("outer"):
            with phases.timed("allocates"):
                block = np.ones(peak - resident + (80 << 20), np.uint8)  # every page touched
                del block
    grew = {p.name: p.peak_growth_mb for p in collected.phases()}
    assert grew["allocates"] >= 60 and grew["outer"] < 20  # not counted again in the phase around it
    assert phases.describe(collected.phases()).endswith(f"grew most in allocates (+{grew['allocates']:.0f} MB)")
