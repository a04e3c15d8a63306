"""Temporal smoothing of the 3D target (meres_ros/tracking.py), against hand-computed values."""
import pytest

from meres_ros.tracking import TargetTracker


def test_exponential_smoothing_and_reset_on_a_new_sentence():
    tracker = TargetTracker(smoothing=0.5, lost_after=3)
    assert tracker.update(1, 0, (1.0, 0.0, 2.0)).point == (1.0, 0.0, 2.0)  # the first sighting as it is
    assert tracker.update(1, 0, (3.0, 0.0, 2.0)).point == (2.0, 0.0, 2.0)  # 0.5 x 1 + 0.5 x 3
    assert tracker.update(1, 0, (3.0, 1.0, 2.0)).point == (2.5, 0.5, 2.0)
    assert tracker.update(1, 1, (9.0, 9.0, 9.0)).point == (9.0, 9.0, 9.0)  # each expression its own target
    fresh = tracker.update(2, 0, (7.0, 7.0, 7.0))  # a new sentence: nothing carries over
    assert fresh.point == (7.0, 7.0, 7.0) and not fresh.lost


def test_short_dropouts_hold_the_target_then_it_is_lost_and_forgotten():
    tracker = TargetTracker(smoothing=0.5, lost_after=3)
    tracker.update(1, 0, (2.0, 0.0, 1.0))
    held = [tracker.update(1, 0, None) for _ in range(2)]
    assert all(s.point == (2.0, 0.0, 1.0) and not s.lost for s in held)
    lost = tracker.update(1, 0, None)  # the third frame in a row without it
    assert lost.lost and lost.point is None
    assert tracker.update(1, 0, None).lost
    again = tracker.update(1, 0, (4.0, 0.0, 1.0))  # seen again: starts fresh, not averaged with (2, 0, 1)
    assert again.point == (4.0, 0.0, 1.0) and not again.lost


def test_without_smoothing_points_pass_through_and_loss_is_still_reported():
    tracker = TargetTracker(smoothing=0.0, lost_after=2)
    assert tracker.update(1, 0, (1.0, 2.0, 3.0)).point == (1.0, 2.0, 3.0)
    assert tracker.update(1, 0, (3.0, 2.0, 3.0)).point == (3.0, 2.0, 3.0)
    first_miss = tracker.update(1, 0, None)
    assert first_miss.point is None and not first_miss.lost  # no hold without smoothing
    assert tracker.update(1, 0, None).lost


def test_a_target_never_seen_is_not_lost():
    tracker = TargetTracker(smoothing=0.5, lost_after=2)
    assert not any(tracker.update(1, 0, None).lost for _ in range(5))


@pytest.mark.parametrize("smoothing, lost_after", [(1.0, 5), (-0.1, 5), (0.5, 0)])
def test_bad_settings_are_refused(smoothing, lost_after):
    with pytest.raises(ValueError):
        TargetTracker(smoothing, lost_after)
