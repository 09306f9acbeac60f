"""mIoU, per-class IoU and pixel accuracy against cases worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from vision_mamba.tasks.segmentation import ConfusionMatrix
from vision_mamba.tasks.segmentation.metrics import json_safe, metrics_from_confusion

IGNORE = 255


def metrics(pred, target, num_classes):
    cm = ConfusionMatrix(num_classes, IGNORE)
    cm.update(torch.tensor(pred), torch.tensor(target))
    return cm.compute()


def test_hand_computed_case_with_ignored_pixels():
    target = [[0, 0, 1, 1],
              [0, 2, 2, IGNORE]]
    pred = [[0, 1, 1, 1],
            [0, 2, 0, 2]]  # the last pixel is ignored whatever it predicts
    m = metrics(pred, target, 3)
    # class 0: TP 2 (0,0),(1,0); GT 3; predicted 3 ((0,0),(1,0),(1,2)) -> IoU 2 / (3 + 3 - 2) = 1/2
    # class 1: TP 2; GT 2; predicted 3 ((0,1),(0,2),(0,3)) -> IoU 2 / 3
    # class 2: TP 1; GT 2; predicted 1 ((1,1); (1,3) is ignored) -> IoU 1 / 2
    assert m["per_class_iou"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)  # 7 labelled pixels, 5 right
    assert m["per_class_acc"] == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert m["num_pixels"] == 7 and m["classes_scored"] == 3


def test_absent_classes():
    """Class 3 is in neither prediction nor ground truth: no IoU, not averaged. Class 2 is predicted but absent
    from the ground truth: IoU 0, averaged (a false positive costs)."""
    target = [[0, 0, 1, 1]]
    pred = [[0, 0, 1, 2]]
    m = metrics(pred, target, 4)
    iou = m["per_class_iou"]
    # class 0: 2 / 2 = 1; class 1: TP 1, GT 2, predicted 1 -> 1 / 2; class 2: 0 / 1 = 0; class 3: none
    assert iou[:3] == pytest.approx([1.0, 0.5, 0.0]) and math.isnan(iou[3])
    assert m["miou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert math.isnan(m["per_class_acc"][2]) and math.isnan(m["per_class_acc"][3])  # no ground truth
    assert m["classes_scored"] == 3


def test_everything_ignored_gives_nan_not_zero():
    m = metrics([[0, 1]], [[IGNORE, IGNORE]], 2)
    assert math.isnan(m["miou"]) and math.isnan(m["pixel_acc"]) and m["num_pixels"] == 0
    assert json_safe(m)["miou"] is None  # JSON has no NaN


def test_accumulates_over_updates_like_one_big_update():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (4, 16, 16))
    target[target == 4] = IGNORE
    pred = torch.randint(0, 4, (4, 16, 16))
    one = ConfusionMatrix(4, IGNORE)
    one.update(pred, target)
    parts = ConfusionMatrix(4, IGNORE)
    for p, t in zip(pred, target):
        parts.update(p, t)
    assert torch.equal(one.matrix, parts.matrix)


def test_reduced_across_processes():
    """all_reduce sums the matrices (one all-reduce of a [K, K] tensor): two shards give the metrics of all."""
    class FakeContext:  # the two processes' matrices, summed as dist.all_reduce would
        def __init__(self, other):
            self.other = other

        def all_reduce_sum(self, tensor):
            tensor += self.other
            return tensor

    torch.manual_seed(1)
    pred, target = torch.randint(0, 3, (2, 8, 8)), torch.randint(0, 3, (2, 8, 8))
    shard0, shard1, whole = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    shard0.update(pred[0], target[0])
    shard1.update(pred[1], target[1])
    whole.update(pred, target)
    shard0.all_reduce(FakeContext(shard1.matrix))
    assert shard0.compute() == whole.compute()


def test_bad_labels_are_reported():
    cm = ConfusionMatrix(3, IGNORE)
    with pytest.raises(ValueError, match=r"target labels \[7\] are outside 0..2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="predicted labels"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))


def test_metrics_from_a_given_matrix():
    matrix = torch.tensor([[5, 1], [0, 0]])  # class 1 never in the ground truth, predicted once
    m = metrics_from_confusion(matrix, ["a", "b"])
    assert m["per_class_iou"] == pytest.approx([5 / 6, 0.0]) and m["class_names"] == ["a", "b"]
