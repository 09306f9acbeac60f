"""Detection (issue 6): COCO data checks, LSJ, the ViTDet backbone + torchvision Mask R-CNN, COCO evaluation.

A tiny synthetic COCO set (coloured rectangles on noise, polygons + compressed / uncompressed RLE + a crowd region,
non-contiguous category ids) is written to a temporary folder; real COCO-128 only in the tests marked `data`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from vision_mamba.tasks.detection.amp import set_autocast
from vision_mamba.tasks.detection.backbone import ViTDetBackbone, create_trunk
from vision_mamba.tasks.detection.config import ConfigError, DetectionConfig, ModelConfig, TrainConfig, load_config
from vision_mamba.tasks.detection.datasets import AnnotationError, CocoInstances, collate_detection
from vision_mamba.tasks.detection.evaluation import detections_to_coco, evaluate_coco
from vision_mamba.tasks.detection.model import FixedSizeTransform, build_detector
from vision_mamba.tasks.detection.trainer import StreamBatchSampler, lr_factor, param_groups
from vision_mamba.tasks.detection.transforms import LargeScaleJitter, boxes_from_masks

CATEGORIES = [{"id": 3, "name": "square", "supercategory": "shape"}, {"id": 7, "name": "bar", "supercategory": "shape"}]

# Small heads so that a train step takes a fraction of a second on a 2-core CPU.
TINY_MODEL = dict(backbone="test_vim", img_size=64, drop_path_rate=0.0, pyramid_channels=32, rpn_conv_depth=1,
                  box_head_convs=1, box_head_fc=64, mask_head_convs=1, rpn_pre_nms_top_n_train=100,
                  rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                  box_batch_size_per_image=32, box_detections_per_img=20)
TINY_DEIT_ARGS = dict(depth=2, embed_dim=32, num_heads=2)


# ---------------------------------------------------------------------- a synthetic COCO set
def _rle(mask: np.ndarray) -> Dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(mask: np.ndarray) -> Dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_coco(root: Path, num_images: int = 3, height: int = 48, width: int = 64, seed: int = 0
              ) -> Tuple[Path, Path]:
    """Images of coloured rectangles on noise + a COCO json: one 'square' (polygon) and one 'bar' (RLE) per
    image, an uncompressed RLE in image 1, a crowd region in image 0. Returns (image folder, json path)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        pixels = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
        x0, y0 = 4 + 3 * i, 5 + 2 * i
        sq = (x0, y0, 16, 14)  # x, y, w, h
        bar = (30 + 2 * i, 8, 26 - 2 * i, 9)
        pixels[sq[1]:sq[1] + sq[3], sq[0]:sq[0] + sq[2]] = (220, 30, 30)
        pixels[bar[1]:bar[1] + bar[3], bar[0]:bar[0] + bar[2]] = (30, 30, 220)
        name = f"img_{i:03d}.png"
        Image.fromarray(pixels).save(image_dir / name)
        image_id = 100 + i
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        x, y, w, h = sq
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": 3, "iscrowd": 0, "area": w * h,
                            "bbox": [x, y, w, h],
                            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        ann_id += 1
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[bar[1]:bar[1] + bar[3], bar[0]:bar[0] + bar[2]] = 1
        seg = _uncompressed_rle(mask) if i == 1 else _rle(mask)
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": 7, "iscrowd": 0,
                            "area": int(mask.sum()), "bbox": list(bar), "segmentation": seg})
        ann_id += 1
        if i == 0:
            crowd = np.zeros((height, width), dtype=np.uint8)
            crowd[30:44, 40:60] = 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                                "area": int(crowd.sum()), "bbox": [40, 30, 20, 14], "segmentation": _rle(crowd)})
            ann_id += 1
    ann_path = root / "instances.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return image_dir, ann_path


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these models are tiny, and with several test runs sharing two cores, OpenMP's
    spinning threads make a step ten times slower than one thread does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def coco(tmp_path) -> Tuple[Path, Path]:
    return make_coco(tmp_path)


def _rewrite(ann_path: Path, fn) -> None:
    data = json.loads(ann_path.read_text())
    fn(data)
    ann_path.write_text(json.dumps(data))


def tiny_detector(num_classes: int = 2, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(ModelConfig(**{**TINY_MODEL, **overrides}), num_classes=num_classes)


def _float_batch(dataset, indices) -> Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    images, targets = collate_detection([dataset[i] for i in indices])
    return [img.float() / 255 for img in images], targets


# ---------------------------------------------------------------------- dataset
def test_dataset_targets_and_label_mapping(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    assert len(ds) == 3 and ds.num_classes == 2 and ds.category_ids == [3, 7]
    assert ds.num_crowd == 1
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    # the crowd region of image 0 is not a target; labels are contiguous 1..K in category order
    assert target["labels"].tolist() == [1, 2]
    assert target["masks"].shape == (2, 48, 64) and target["masks"].dtype == torch.uint8
    assert torch.equal(target["boxes"][0], torch.tensor([4.0, 5.0, 20.0, 19.0]))
    # masks decoded from polygon, compressed and uncompressed RLE match the drawn rectangles
    for i in range(3):
        _, t = ds[i]
        assert torch.equal(boxes_from_masks(t["masks"]), t["boxes"]), i
    assert ds.coco.getAnnIds(imgIds=[100], iscrowd=True)  # COCOeval still sees the crowd region


def test_missing_image_file_is_named(coco):
    image_dir, ann = coco
    (image_dir / "img_001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 images .* img_001\.png"):
        CocoInstances(image_dir, ann, progress=False)


def test_image_size_mismatch(coco):
    image_dir, ann = coco
    Image.new("RGB", (64, 50)).save(image_dir / "img_002.png")  # the json still says 48x64
    with pytest.raises(AnnotationError, match=r"image 102 \(img_002.png\) is 50x64 pixels but .* 48x64"):
        CocoInstances(image_dir, ann, progress=False)


@pytest.mark.parametrize("field,value,message", [
    ("bbox", [-2, 5, 10, 10], "negative coordinate"),
    ("bbox", [4, 5, 0, 10], "non-positive width or height"),
    ("bbox", [4, 5, 10, -3], "non-positive width or height"),
    ("bbox", [4, 5, 10], "is not 4 finite numbers"),
    ("bbox", [4, 5, 200, 10], "extends beyond"),
    ("segmentation", [[1, 2, 3, 4, 5]], "polygon 0 has 5 coordinates"),
    ("segmentation", [[1, 2, 3, "x", 5, 6]], "polygon 0 is not a list of finite numbers"),
    ("segmentation", {"counts": "abc"}, "RLE needs exactly 'counts' and 'size'"),
    ("segmentation", {"counts": "abc", "size": [10, 10]}, "differs from the image size"),
    ("segmentation", 42, "unknown format"),
    ("segmentation", [], "has no segmentation"),
    ("category_id", 99, "unknown category_id 99"),
    ("image_id", 555, "image id 555, which is not in 'images'"),
])
def test_malformed_annotation_errors(coco, field, value, message):
    image_dir, ann = coco
    _rewrite(ann, lambda d: d["annotations"][1].update({field: value}))
    with pytest.raises(AnnotationError, match=r"annotation 2 \(image \d+\) .*" + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        CocoInstances(image_dir, ann, progress=False)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.clear() or d.update(x=[]), "has no 'images' list"),
    (lambda d: d["annotations"].append(7), "1 entries of 'annotations' are not mappings, e.g. 7"),
    (lambda d: d["images"][0].update(height="48"), "1 image entries lack an integer id, a file_name, or a positive"),
    (lambda d: d["images"][0].update(file_name=None), "1 image entries lack an integer id, a file_name"),
    (lambda d: d["categories"][0].pop("id"), "1 category entries have no integer id, e.g. entry 0 of 'categories'"),
    (lambda d: d["annotations"][2].pop("id"), "1 annotation entries have no integer id, e.g. entry 2"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"image ids \[100\] occur more than once"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), r"category ids \[3\] occur more than once"),
    (lambda d: d["annotations"][1].update(id=1), r"annotation ids \[1\] occur more than once"),
])
def test_malformed_coco_structure_is_an_annotation_error(coco, edit, message):
    # (these used to be an AttributeError / KeyError / TypeError deep inside, or, for repeated ids, a silently
    # doubled image or category and a ground truth that lost an object)
    image_dir, ann = coco
    _rewrite(ann, edit)
    with pytest.raises(AnnotationError, match=message):
        CocoInstances(image_dir, ann, progress=False)
    for content in ("[]", "null"):
        ann.write_text(content)
        with pytest.raises(AnnotationError, match="not a COCO instances file"):
            CocoInstances(image_dir, ann, progress=False)


def test_skip_bad_annotations_counts_them(coco):
    image_dir, ann = coco
    def corrupt(d):
        d["annotations"][1]["bbox"] = [4, 5, -1, 3]
        d["annotations"][3]["segmentation"] = [[1, 2, 3]]
    _rewrite(ann, corrupt)
    ds = CocoInstances(image_dir, ann, on_bad_annotation="skip", progress=False)
    assert ds.skipped_annotations == 2
    assert ds[0][1]["labels"].tolist() == [1]  # annotation 2 (the bar of image 0) dropped
    assert 2 not in ds.coco.anns and 4 not in ds.coco.anns


def test_keep_empty_option(coco):
    image_dir, ann = coco
    _rewrite(ann, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 101]))
    assert len(CocoInstances(image_dir, ann, keep_empty=True, progress=False)) == 3
    ds = CocoInstances(image_dir, ann, keep_empty=False, progress=False)
    assert ds.image_ids == [100, 102]


# ---------------------------------------------------------------------- transforms
def test_lsj_keeps_boxes_masks_and_image_consistent(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    lsj = LargeScaleJitter(size=32, scale_range=(0.3, 2.0), hflip_prob=0.5)
    torch.manual_seed(0)
    sizes = set()
    for _ in range(12):
        image, target = lsj(ds.image(0), ds.target(0))
        h, w = image.shape[-2:]
        sizes.add((h, w))
        assert h <= 32 and w <= 32 and image.dtype == torch.uint8
        n = len(target["labels"])
        assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, h, w)
        assert torch.equal(boxes_from_masks(target["masks"]), target["boxes"])
        assert (target["boxes"][:, 2:] - target["boxes"][:, :2] >= 1).all()
    assert len(sizes) > 3  # the scale really jitters


def test_lsj_flip_at_scale_one_is_an_exact_mirror(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    lsj = LargeScaleJitter(size=64, scale_range=(1.0, 1.0), hflip_prob=1.0)  # 48x64 fits 64 exactly: no resize
    image, target = lsj(ds.image(1), ds.target(1))
    original = ds.target(1)
    assert torch.equal(image, ds.image(1).flip(-1))
    assert torch.equal(target["masks"], original["masks"].flip(-1))
    expected = original["boxes"].clone()
    expected[:, [0, 2]] = 64 - original["boxes"][:, [2, 0]]
    assert torch.allclose(target["boxes"], expected)


# ---------------------------------------------------------------------- evaluation
def _perfect_outputs(ds) -> List[Dict[str, torch.Tensor]]:
    outputs = []
    for i in range(len(ds)):
        t = ds.target(i)
        outputs.append(dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"])),
                            masks=t["masks"][:, None].float()))
    return outputs


def test_perfect_predictions_give_ap_one(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    results = detections_to_coco(_perfect_outputs(ds), ds.image_ids, ds.category_ids)
    assert {r["category_id"] for r in results} == {3, 7}
    metrics = evaluate_coco(ds.coco, results, ds.image_ids)
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["bbox_APl"] is None  # no large objects in 48x64 images: COCOeval's -1 becomes None


def test_imperfect_predictions_score_lower(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    outputs = _perfect_outputs(ds)
    for out in outputs:  # shift every box and mask 4 px right: IoU ~0.6-0.8
        out["boxes"] = out["boxes"] + torch.tensor([4.0, 0.0, 4.0, 0.0])
        out["masks"] = torch.roll(out["masks"], shifts=4, dims=-1)
    metrics = evaluate_coco(ds.coco, detections_to_coco(outputs, ds.image_ids, ds.category_ids), ds.image_ids)
    assert 0.0 < metrics["bbox_AP"] < 0.9 and 0.0 < metrics["segm_AP"] < 0.9
    assert metrics["bbox_AP50"] == pytest.approx(1.0)
    swapped = _perfect_outputs(ds)  # right places, wrong classes
    for out in swapped:
        out["labels"] = 3 - out["labels"]
    metrics = evaluate_coco(ds.coco, detections_to_coco(swapped, ds.image_ids, ds.category_ids), ds.image_ids)
    assert metrics["bbox_AP"] == 0.0 and metrics["segm_AP"] == 0.0


def test_no_predictions_give_zero(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    metrics = evaluate_coco(ds.coco, [], ds.image_ids)
    assert metrics["bbox_AP"] == 0.0 and metrics["segm_AP"] == 0.0


# ---------------------------------------------------------------------- model
def test_backbone_pyramid_shapes():
    trunk = create_trunk("test_vim", 128)
    assert trunk.pos_embed.shape[1] == 64 and trunk.cls_token is None  # 8x8 patches, no class token
    backbone = ViTDetBackbone(trunk, 128, out_channels=32)
    features = backbone(torch.randn(2, 3, 128, 128))
    assert list(features) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(f.shape) for f in features.values()] == [(2, 32, s, s) for s in (32, 16, 8, 4, 2)]
    with pytest.raises(ValueError, match="takes 128x128 inputs"):
        backbone(torch.randn(1, 3, 96, 128))


def test_deit_backbone_drops_class_token():
    trunk = create_trunk("deit_tiny_patch16_224", 64, **TINY_DEIT_ARGS)
    backbone = ViTDetBackbone(trunk, 64, out_channels=16)
    assert backbone.forward_map(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)


def test_fixed_size_transform_pads_and_resizes():
    transform = FixedSizeTransform(128, [0.5] * 3, [0.25] * 3)
    image = torch.full((3, 48, 64), 0.75)
    transform.eval()  # evaluation: the longer side becomes 128, then zero padding to 128x128
    batch, _ = transform([image])
    assert batch.tensors.shape == (1, 3, 128, 128) and batch.image_sizes == [(96, 128)]
    assert batch.tensors[0, :, :96].eq(1.0).all() and batch.tensors[0, :, 96:].eq(0).all()
    transform.train()  # training: LSJ output that fits is not resized
    target = dict(boxes=torch.tensor([[1.0, 2.0, 10.0, 12.0]]), labels=torch.tensor([1]),
                  masks=torch.ones(1, 48, 64, dtype=torch.uint8))
    batch, targets = transform([image], [target])
    assert batch.image_sizes == [(48, 64)] and torch.equal(targets[0]["boxes"], target["boxes"])
    assert batch.tensors.shape == (1, 3, 128, 128)


@pytest.mark.parametrize("backbone,args", [("test_vim", {}), ("deit_tiny_patch16_224", TINY_DEIT_ARGS)])
def test_forward_train_and_eval(coco, backbone, args):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    model = tiny_detector(backbone=backbone, backbone_args=args)
    images, targets = _float_batch(ds, [0, 1])
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # nothing left unused
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, img in zip(outputs, images):
        n = len(out["scores"])
        assert out["masks"].shape == (n, 1, *img.shape[-2:])
        if n:
            assert (out["boxes"][:, 2] <= img.shape[-1]).all() and (out["boxes"][:, 3] <= img.shape[-2]).all()
            assert set(out["labels"].tolist()) <= {1, 2}


def test_image_without_objects_trains(coco):
    image_dir, ann = coco
    _rewrite(ann, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 101]))
    ds = CocoInstances(image_dir, ann, transform=LargeScaleJitter(64, (0.5, 1.5)), keep_empty=True, progress=False)
    images, targets = _float_batch(ds, [0, 1])
    assert len(targets[1]["labels"]) == 0 and targets[1]["masks"].shape[0] == 0
    model = tiny_detector()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bf16_autocast_parts(coco):
    image_dir, ann = coco
    ds = CocoInstances(image_dir, ann, progress=False)
    model = tiny_detector()
    assert set_autocast(model, torch.bfloat16) == 4  # backbone, RPN head, box head, mask head
    features = model.backbone(torch.randn(1, 3, 64, 64))
    assert all(f.dtype == torch.float32 for f in features.values())  # bf16 inside, fp32 out
    images, targets = _float_batch(ds, [0, 1])
    losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_init_from_classification_checkpoint(tmp_path):
    import timm

    from vision_mamba.models.checkpoint import save_state_dict

    torch.manual_seed(1)
    classifier = timm.create_model("test_vim", num_classes=10)  # 64 px, middle class token, 10 classes
    save_state_dict(classifier, tmp_path / "cls.safetensors")
    model = build_detector(ModelConfig(**{**TINY_MODEL, "img_size": 128}), num_classes=2,
                           init=str(tmp_path / "cls.safetensors"))
    trunk = model.backbone.trunk
    assert torch.equal(trunk.layers[1].mixer.in_proj.weight, classifier.layers[1].mixer.in_proj.weight)
    assert trunk.pos_embed.shape == (1, 64, 32) and trunk.cls_token is None  # 4x4 + cls -> 8x8, no cls
    grid = classifier.pos_embed[:, [i for i in range(17) if i != 8]].reshape(1, 4, 4, 32)  # drop the middle token
    assert torch.allclose(trunk.pos_embed.reshape(1, 8, 8, 32).mean((1, 2)), grid.mean((1, 2)), atol=0.02)


def test_deit_init_from_classification_checkpoint(tmp_path):
    import timm

    from vision_mamba.models.checkpoint import save_state_dict

    torch.manual_seed(2)
    classifier = timm.create_model("deit_tiny_patch16_224", img_size=64, num_classes=10, **TINY_DEIT_ARGS)
    save_state_dict(classifier, tmp_path / "deit.safetensors")
    model = build_detector(ModelConfig(**{**TINY_MODEL, "img_size": 128, "backbone": "deit_tiny_patch16_224",
                                          "backbone_args": TINY_DEIT_ARGS}),
                           num_classes=2, init=str(tmp_path / "deit.safetensors"))
    trunk = model.backbone.trunk
    assert torch.equal(trunk.blocks[1].attn.qkv.weight, classifier.blocks[1].attn.qkv.weight)
    assert torch.equal(trunk.cls_token, classifier.cls_token)  # kept inside DeiT, dropped from the map
    assert trunk.pos_embed.shape == (1, 1 + 64, 32)  # 4x4 grid resized to 8x8


def test_param_groups_layer_decay_and_weight_decay():
    model = tiny_detector()
    groups = param_groups(model, weight_decay=0.1, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    trunk = model.backbone.trunk  # 2 blocks: embedding = layer 0, blocks = layers 1, 2, the rest = 3
    assert scale_of[id(trunk.patch_embed.proj.weight)] == 0.5 ** 3
    assert scale_of[id(trunk.layers[0].mixer.in_proj.weight)] == 0.5 ** 2
    assert scale_of[id(trunk.layers[1].mixer.in_proj.weight)] == 0.5
    assert scale_of[id(model.roi_heads.box_predictor.cls_score.weight)] == 1.0
    assert wd_of[id(trunk.pos_embed)] == 0.0 and wd_of[id(trunk.layers[0].mixer.A_log)] == 0.0
    assert wd_of[id(trunk.layers[0].mixer.in_proj.weight)] == 0.1
    assert wd_of[id(model.roi_heads.box_predictor.cls_score.bias)] == 0.0
    assert len(scale_of) == sum(1 for p in model.parameters() if p.requires_grad)


def test_lr_schedule():
    cfg = TrainConfig(iters=100, warmup_iters=10, warmup_factor=0.001, schedule="step", milestones=[0.5, 0.9])
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert lr_factor(5, cfg) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, cfg) == 1.0 and lr_factor(49, cfg) == 1.0
    assert lr_factor(50, cfg) == pytest.approx(0.1) and lr_factor(95, cfg) == pytest.approx(0.01)
    cos = TrainConfig(iters=100, warmup_iters=0, schedule="cosine")
    assert lr_factor(0, cos) == 1.0 and lr_factor(50, cos) == pytest.approx(0.5)
    assert lr_factor(100, cos) == pytest.approx(0.0, abs=1e-12)


def test_sampler_resumes_the_same_stream():
    full = list(StreamBatchSampler(10, 4, num_iters=7, seed=3))
    assert list(StreamBatchSampler(10, 4, num_iters=7, start_iter=4, seed=3)) == full[4:]
    stream = [i for batch in full for i in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation every epoch
    ranks = [list(StreamBatchSampler(10, 2, num_iters=7, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == full  # two processes split each global batch


# ---------------------------------------------------------------------- config
def test_config_merging_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: test_vim\n  img_size: 128\ntrain:\n  iters: 7\n")
    cfg = load_config(path, ["train.lr=3e-4", "data.scale_range=[0.5, 1.5]", "eval.max_images=2"])
    assert cfg.model.backbone == "test_vim" and cfg.model.img_size == 128 and cfg.train.iters == 7
    assert cfg.train.lr == 3e-4 and cfg.data.scale_range == [0.5, 1.5] and cfg.eval.max_images == 2
    assert cfg.train.batch_size == DetectionConfig().train.batch_size  # untouched defaults stay
    assert load_config(base=cfg.to_dict()).to_dict() == cfg.to_dict()  # round trip through a checkpoint
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'; did you mean 'train.lr'"):
        load_config(path, ["train.lrr=1"])
    path.write_text("modle:\n  img_size: 128\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'modle'; did you mean 'model'"):
        load_config(path)
    with pytest.raises(ConfigError, match="train.iters must be an integer"):
        load_config(None, ["train.iters=many"])
    with pytest.raises(ConfigError, match="multiple of 64"):
        load_config(None, ["model.img_size=200"])
    with pytest.raises(ConfigError, match="on_bad_annotation"):
        load_config(None, ["data.on_bad_annotation=ignore"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.iters"])
    path.write_bytes(b"\x89PNG\r\n\x1a\n")  # an image given as the config: one line, not a UnicodeDecodeError
    with pytest.raises(ConfigError, match=r"c.yaml: not a YAML file \(not UTF-8 text: invalid start byte at byte 0\)"):
        load_config(path)


@pytest.mark.parametrize("override,message", [
    ("eval.batch_size=0", "eval.batch_size must be at least 1; got 0"),  # was a traceback after training
    ("eval.max_images=0", "eval.max_images must be at least 1; got 0"),  # was an evaluation of no images
    ("eval.mask_threshold=2", r"eval.mask_threshold must be in \[0, 1\]; got 2.0"),
    ("data.workers=-1", "data.workers must be at least 0; got -1"),
    ("data.hflip_prob=1.5", r"data.hflip_prob must be in \[0, 1\]"),
    ("model.pyramid_channels=0", "model.pyramid_channels must be at least 1"),
    ("model.box_detections_per_img=0", "model.box_detections_per_img must be at least 1"),  # never detects
    ("model.aspect_ratios=[]", r"model.aspect_ratios must be positive numbers; got \[\]"),
    ("model.anchor_sizes=[8, 16, 0, 64, 128]", "model.anchor_sizes must be positive numbers"),
    ("train.warmup_iters=-5", "train.warmup_iters must be at least 0"),
    ("train.lr=-1e-4", "train.lr must be positive"),
    ("train.gamma=0", "train.gamma must be positive; got 0.0"),  # was an lr of 0 after the first milestone
    ("train.milestones=[0.9, 0.5]", r"train.milestones must be ascending fractions of train.iters in \(0, 1\)"),
    ("train.milestones=[800, 900]", r"train.milestones must be .*; got \[800.0, 900.0\]"),  # iterations: never reached
    ("train.betas=[0.9, 1.0]", r"train.betas must be two numbers in \[0, 1\); got \[0.9, 1.0\]"),
    ("train.clip_grad=-1", r"train.clip_grad must be positive \(or null: no clipping\); got -1.0"),  # flipped grads
    ("train.clip_grad=0", "train.clip_grad must be positive"),  # was silently no clipping
    ("train.warmup_factor=0", r"train.warmup_factor must be in \(0, 1\]; got 0.0"),
    ("train.warmup_factor=2", r"train.warmup_factor must be in \(0, 1\]"),
    ("train.time_limit_minutes=-1", r"train.time_limit_minutes must be at least 0 \(or null: no limit\)"),
    ("data.min_box_size=-1", "data.min_box_size must be at least 0; got -1.0"),
])
def test_config_ranges_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    load_config(None, ["eval.max_images=null", "model.box_head_convs=0", "train.warmup_iters=0", "train.milestones=[]",
                       "train.clip_grad=1.0", "train.time_limit_minutes=0", "train.warmup_factor=1",
                       "data.min_box_size=0", "train.betas=[0, 0.999]"])  # allowed


# ---------------------------------------------------------------------- real data
@pytest.mark.data
def test_coco128_perfect_predictions(shared_data):
    root = shared_data / "coco128"
    # val: RLE masks from the panoptic annotations; train (first 40 images): polygons and a crowd region
    for split, max_images in (("val2017", None), ("train2017", 40)):
        ds = CocoInstances(root / "images" / split, root / "annotations" / f"instances_{split}.json",
                           max_images=max_images, progress=False)
        results = detections_to_coco(_perfect_outputs(ds), ds.image_ids, ds.category_ids)
        metrics = evaluate_coco(ds.coco, results, ds.image_ids)
        assert metrics["bbox_AP"] == pytest.approx(1.0, abs=1e-6), split
        assert metrics["segm_AP"] == pytest.approx(1.0, abs=1e-6), split
    assert ds.num_crowd == 1 and sum(len(ds.target(i)["labels"]) for i in range(len(ds))) == 317


@pytest.mark.data
def test_coco128_lsj_samples(shared_data):
    root = shared_data / "coco128"
    lsj = LargeScaleJitter(512, scale_range=(0.1, 2.0))
    ds = CocoInstances(root / "images" / "train2017", root / "annotations" / "instances_train2017.json",
                       transform=lsj, max_images=12, progress=False)
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, target = ds[i]
        assert max(image.shape[-2:]) <= 512
        assert torch.equal(boxes_from_masks(target["masks"]), target["boxes"])
        assert math.isfinite(float(target["boxes"].sum()))


def test_builder_and_command_options_are_checked(capsys):
    from vision_mamba import cli

    with pytest.raises(ValueError, match="num_classes .* must be a whole number >= 1, got 0"):
        build_detector(ModelConfig(**TINY_MODEL), num_classes=0)
    with pytest.raises(TypeError, match=r"takes the model section of a config \(config.model\)"):
        build_detector(DetectionConfig(), num_classes=2)
    with pytest.raises(ConfigError, match=r"constructor refused the configured arguments \['foo'\]"):
        build_detector(ModelConfig(**{**TINY_MODEL, "backbone_args": {"foo": 1}}), num_classes=2)
    model = tiny_detector().eval()
    for images, error, message in (([], ValueError, "non-empty list of images"),
                                   ([torch.rand(32, 48, 3)], ValueError, r"image 0: expected an RGB tensor \[3, H, W\]"),
                                   ([torch.rand(3, 0, 8)], ValueError, "with H, W >= 1, got \\(3, 0, 8\\)"),
                                   ([torch.zeros(3, 8, 8, dtype=torch.uint8)], TypeError, "divide uint8 images")):
        with pytest.raises(error, match=message), torch.no_grad():
            model(images)
    for argv, message in (
            (["det-eval", "--checkpoint", "x", "--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
            (["det-eval", "--checkpoint", "x", "--max-images", "-1"], "--max-images: expected a whole number >= 1"),
            (["det-predict", "--checkpoint", "x", "--image", "y", "--output", "z.png", "--score-thresh", "2"],
             "--score-thresh: expected a number in [0, 1], got 2"),
            (["det-predict", "--checkpoint", "x", "--image", "y", "--output", "z.png", "--max-detections", "-1"],
             "--max-detections: expected a whole number >= 1")):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
