"""--time-limit predicts the next epoch from steps that neither compile nor autotune.

The delays are added to lib.train's clock rather than slept (the test takes seconds whatever the machine's load):
each slow step moves the clock lib.train reads 100 s on. 80 images in batches of 16: 5 steps an epoch.
"""
import time

import pytest

import lib.train as train_mod
from lib.config import make_config
from lib.train import train

DELAY = 100.0


@pytest.mark.parametrize("slow_steps, limit_minutes, epochs_done", [
    # epoch 1 takes 200 s, the next ones seconds: 3 epochs fit 5 minutes (before: stopped after epoch 1, as
    # 200 s gone + 1.05 x 200 s predicted > 300 s)
    ({1, 2}, 5.0, 3),
    # every step slow: 500 s an epoch; 500 s gone + 1.05 x 500 s > 10 minutes: the limit still stops
    (set(range(1, 16)), 10.0, 1),
])
def test_first_slow_steps_are_not_extrapolated(smoke_root, tmp_path, monkeypatch, slow_steps, limit_minutes,
                                               epochs_done):
    offset = [0.0]

    class Clock:  # lib.train's clock: real time plus the delays so far
        @staticmethod
        def monotonic():
            return time.monotonic() + offset[0]

        @staticmethod
        def perf_counter():
            return time.perf_counter() + offset[0]

    real_step, calls = train_mod.train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] in slow_steps:
            offset[0] += DELAY
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "time", Clock)
    monkeypatch.setattr(train_mod, "train_step", step)
    cfg = make_config("smoke", model="light_resnet18", base_channels=8, progress=False, device="cpu",
                      num_workers=0, data_dir=str(smoke_root), out=str(tmp_path / "run"), train_size=80,
                      val_size=40, batch_size=16, epochs=3, time_limit=limit_minutes)
    summary = train(cfg)
    assert summary["epochs_done"] == epochs_done
    assert summary["history"][0]["epoch_seconds"] > len(slow_steps & {1, 2, 3, 4, 5}) * DELAY  # the delay counted


def test_the_time_limit_decision_by_hand():
    """The next epoch runs when the time gone plus 1.05 times its prediction fits the limit, to the second."""
    from lib.guard.stopping import out_of_time

    assert out_of_time(1, 18, 40) is None  # 18 s + 42 s = 60 s: fits exactly
    assert out_of_time(1, 0, 57.5) is not None  # 60.375 s > 1 minute
    assert out_of_time(1, 0, 57) is None  # 59.85 s
    why = out_of_time(2, 100, 40)  # 100 + 42 > 120
    assert why == "--time-limit 2 minutes: 1.7 minutes gone, the next epoch (about 40 s) would not fit"


def test_a_first_epochs_compiling_steps_count_as_steady_ones():
    """Epoch 1 took 100 s, of which its 10 steps 65 s: the first 3 (compiling) 30 s, the other 7 35 s, 5 s each. The
    next epoch: 10 steady steps (50 s) plus the 35 s outside the steps (validation, checkpoint) = 85 s."""
    from lib.guard.stopping import next_epoch_seconds

    timing = {"start": 1000.0, "warm_at": 1030.0, "warm_step": 3, "steps": 10, "end": 1065.0}
    assert next_epoch_seconds(100.0, timing) == pytest.approx(85.0)
    assert next_epoch_seconds(100.0, None) == 100.0 and next_epoch_seconds(100.0, {}) == 100.0


class OtherRank:
    """A torchrun Context of rank 0 whose one peer reports ``peer``: max_over_ranks as the all-reduce computes it."""

    active, rank = True, 0

    def __init__(self, *peer):
        self.peer = peer

    def max_over_ranks(self, *values):
        assert len(values) == len(self.peer)
        return tuple(max(float(a), float(b)) for a, b in zip(values, self.peer))


def test_ranks_agree_on_the_slower_ranks_clock_and_prediction():
    """Rank 0 has spent 10 s and predicts nothing yet; its peer 50 s and 20 s: both decide on 50 + 1.05 x 20 > 60."""
    from lib.guard.stopping import stop_before_epoch

    why = stop_before_epoch(1.0, OtherRank(50.0, 20.0, 0), 10.0, None)
    assert why == "--time-limit 1 minutes: 0.8 minutes gone, the next epoch (about 20 s) would not fit"
    assert stop_before_epoch(1.0, OtherRank(30.0, -1.0, 0), 10.0, 20.0) is None  # 30 + 21 fits
    assert stop_before_epoch(None, OtherRank(500.0, 500.0, 0), 10.0, 20.0) is None  # no limit


def test_a_signal_or_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    from lib.guard.runlock import Terminated
    from lib.guard.stopping import DivergedError, check_in, stop_before_epoch

    with pytest.raises(Terminated):  # the peer got SIGTERM (15): this rank stops at the same point
        stop_before_epoch(None, OtherRank(0.0, -1.0, 15), 1.0, None)
    with pytest.raises(KeyboardInterrupt):  # the peer's Ctrl-C (2)
        check_in(OtherRank(0, 2), 1.25, epoch=0, step=50, last_path=tmp_path / "last.pt")
    with pytest.raises(DivergedError, match=r"loss became non-finite in process 1 at epoch 3, step 100; .* none yet"):
        check_in(OtherRank(2, 0), 1.25, epoch=2, step=100, last_path=tmp_path / "last.pt")  # peer: rank 1 + 1
    check_in(OtherRank(0, 0), 1.25, epoch=2, step=100, last_path=tmp_path / "last.pt")  # all well: goes on


class RecordingPeer(OtherRank):
    """OtherRank that also keeps what this rank contributed to each all-reduce."""

    def __init__(self, *peer, rank=0):
        super().__init__(*peer)
        self.rank, self.sent = rank, []

    def max_over_ranks(self, *values):
        self.sent.append(values)
        return super().max_over_ranks(*values)


def test_what_a_rank_contributes_its_own_nan_and_its_own_signal(tmp_path):
    """A rank with a non-finite loss sends its index + 1 (0: all well), so its peers can name it; a signal this
    process received under torchrun (recorded, not raised) is sent as its number and stops the rank here too."""
    import os
    import signal

    from lib.guard.runlock import Terminated, interrupts_handled
    from lib.guard.stopping import DivergedError, check_in, stop_before_epoch

    peer = RecordingPeer(0, 0, rank=1)
    with pytest.raises(DivergedError, match=r"^loss became nan at epoch 1, step 50"):
        check_in(peer, float("nan"), epoch=0, step=50, last_path=tmp_path / "last.pt")
    assert peer.sent == [(2, 0)]
    peer = RecordingPeer(0, 0)  # rank 0's own nan, the peer all well: still stops
    with pytest.raises(DivergedError, match=r"^loss became nan"):
        check_in(peer, float("nan"), epoch=0, step=50, last_path=tmp_path / "last.pt")
    assert peer.sent == [(1, 0)]
    with interrupts_handled(shared=True):
        os.kill(os.getpid(), signal.SIGTERM)  # recorded only: every rank stops at the next point they all reach
        peer = RecordingPeer(0, 0)
        with pytest.raises(Terminated):
            check_in(peer, 1.0, epoch=0, step=50, last_path=tmp_path / "last.pt")
        assert peer.sent == [(0, signal.SIGTERM)]
        peer = RecordingPeer(0.0, -1.0, 0)
        with pytest.raises(Terminated):
            stop_before_epoch(None, peer, 3.0, None)
        assert peer.sent == [(3.0, -1.0, signal.SIGTERM)]


def test_the_agreed_prediction_edges():
    """Only a prediction sent as -1 means none; any real one, however small, counts, and this rank's own too."""
    from lib.guard.stopping import out_of_time, stop_before_epoch

    assert stop_before_epoch(1.0, OtherRank(50.0, -1.0, 0), 10.0, 20.0) is not None  # this rank's 20 s: 71 > 60
    assert stop_before_epoch(1.0, OtherRank(70.0, -1.0, 0), 10.0, None) is None  # nobody predicts: go on
    assert stop_before_epoch(1.0, OtherRank(59.8, 0.5, 0), 10.0, None) is not None  # 59.8 + 0.525 > 60
    assert stop_before_epoch(1.0, OtherRank(60.5, 0.0, 0), 10.0, None) is not None  # already past the limit
    assert out_of_time(2, 60, 40) is None  # 60 + 42 < 120: two minutes are 120 s


def test_a_diverged_run_names_its_last_good_checkpoint(tmp_path):
    from lib.guard.stopping import DivergedError, check_in

    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(DivergedError, match=rf"Last good checkpoint: {tmp_path / 'last.pt'}\. Try a lower --lr\.$"):
        check_in(OtherRank(0, 0), float("inf"), epoch=4, step=7, last_path=tmp_path / "last.pt")
