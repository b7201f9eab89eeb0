"""Named DiMP/ATOM presets against pytracking: state-dict keys and shapes, classifier settings, ATOM variants.

The reference state dicts below are data: the keys and shapes of pytracking's networks as its factories
build them (``ltr/models/tracking/dimpnet.py::dimpnet50`` with ``ltr/train_settings/dimp/dimp50.py``'s
arguments, ``ltr/models/bbreg/atom.py::atom_resnet18``, and ``dimpnet18`` with ``dimp18.py``'s arguments),
backbone ``fc`` excluded (cmd-ray does not build the ImageNet head). Generated once from pytracking's
module structure; do not regenerate them from cmd-ray.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.distill.step import distill_step
from cmd_ray.models import dimpnet
from cmd_ray.models.classifier import bent_ident_par, bent_ident_par_deriv, leaky_relu_par
from cmd_ray.models.dimpnet import (
    ATOMNet,
    DiMPNet,
    apply_variant_trainability,
    atom18,
    atom50,
    build_atomnet,
    build_dimpnet,
    build_model,
    dimp18,
    dimp50,
    parameter_groups,
    superdimp,
)
from cmd_ray.vocabulary import VARIANTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

DIMP50_STATE: dict[str, tuple[int, ...]] = {
    "bb_regressor.conv3_1r.0.bias": (128,),
    "bb_regressor.conv3_1r.0.weight": (128, 512, 3, 3),
    "bb_regressor.conv3_1r.1.bias": (128,),
    "bb_regressor.conv3_1r.1.num_batches_tracked": (),
    "bb_regressor.conv3_1r.1.running_mean": (128,),
    "bb_regressor.conv3_1r.1.running_var": (128,),
    "bb_regressor.conv3_1r.1.weight": (128,),
    "bb_regressor.conv3_1t.0.bias": (256,),
    "bb_regressor.conv3_1t.0.weight": (256, 512, 3, 3),
    "bb_regressor.conv3_1t.1.bias": (256,),
    "bb_regressor.conv3_1t.1.num_batches_tracked": (),
    "bb_regressor.conv3_1t.1.running_mean": (256,),
    "bb_regressor.conv3_1t.1.running_var": (256,),
    "bb_regressor.conv3_1t.1.weight": (256,),
    "bb_regressor.conv3_2t.0.bias": (256,),
    "bb_regressor.conv3_2t.0.weight": (256, 256, 3, 3),
    "bb_regressor.conv3_2t.1.bias": (256,),
    "bb_regressor.conv3_2t.1.num_batches_tracked": (),
    "bb_regressor.conv3_2t.1.running_mean": (256,),
    "bb_regressor.conv3_2t.1.running_var": (256,),
    "bb_regressor.conv3_2t.1.weight": (256,),
    "bb_regressor.conv4_1r.0.bias": (256,),
    "bb_regressor.conv4_1r.0.weight": (256, 1024, 3, 3),
    "bb_regressor.conv4_1r.1.bias": (256,),
    "bb_regressor.conv4_1r.1.num_batches_tracked": (),
    "bb_regressor.conv4_1r.1.running_mean": (256,),
    "bb_regressor.conv4_1r.1.running_var": (256,),
    "bb_regressor.conv4_1r.1.weight": (256,),
    "bb_regressor.conv4_1t.0.bias": (256,),
    "bb_regressor.conv4_1t.0.weight": (256, 1024, 3, 3),
    "bb_regressor.conv4_1t.1.bias": (256,),
    "bb_regressor.conv4_1t.1.num_batches_tracked": (),
    "bb_regressor.conv4_1t.1.running_mean": (256,),
    "bb_regressor.conv4_1t.1.running_var": (256,),
    "bb_regressor.conv4_1t.1.weight": (256,),
    "bb_regressor.conv4_2t.0.bias": (256,),
    "bb_regressor.conv4_2t.0.weight": (256, 256, 3, 3),
    "bb_regressor.conv4_2t.1.bias": (256,),
    "bb_regressor.conv4_2t.1.num_batches_tracked": (),
    "bb_regressor.conv4_2t.1.running_mean": (256,),
    "bb_regressor.conv4_2t.1.running_var": (256,),
    "bb_regressor.conv4_2t.1.weight": (256,),
    "bb_regressor.fc34_3r.0.bias": (256,),
    "bb_regressor.fc34_3r.0.weight": (256, 512, 1, 1),
    "bb_regressor.fc34_3r.1.bias": (256,),
    "bb_regressor.fc34_3r.1.num_batches_tracked": (),
    "bb_regressor.fc34_3r.1.running_mean": (256,),
    "bb_regressor.fc34_3r.1.running_var": (256,),
    "bb_regressor.fc34_3r.1.weight": (256,),
    "bb_regressor.fc34_4r.0.bias": (256,),
    "bb_regressor.fc34_4r.0.weight": (256, 512, 1, 1),
    "bb_regressor.fc34_4r.1.bias": (256,),
    "bb_regressor.fc34_4r.1.num_batches_tracked": (),
    "bb_regressor.fc34_4r.1.running_mean": (256,),
    "bb_regressor.fc34_4r.1.running_var": (256,),
    "bb_regressor.fc34_4r.1.weight": (256,),
    "bb_regressor.fc3_1r.0.bias": (256,),
    "bb_regressor.fc3_1r.0.weight": (256, 128, 3, 3),
    "bb_regressor.fc3_1r.1.bias": (256,),
    "bb_regressor.fc3_1r.1.num_batches_tracked": (),
    "bb_regressor.fc3_1r.1.running_mean": (256,),
    "bb_regressor.fc3_1r.1.running_var": (256,),
    "bb_regressor.fc3_1r.1.weight": (256,),
    "bb_regressor.fc3_rt.bn.bias": (256,),
    "bb_regressor.fc3_rt.bn.num_batches_tracked": (),
    "bb_regressor.fc3_rt.bn.running_mean": (256,),
    "bb_regressor.fc3_rt.bn.running_var": (256,),
    "bb_regressor.fc3_rt.bn.weight": (256,),
    "bb_regressor.fc3_rt.linear.bias": (256,),
    "bb_regressor.fc3_rt.linear.weight": (256, 6400),
    "bb_regressor.fc4_rt.bn.bias": (256,),
    "bb_regressor.fc4_rt.bn.num_batches_tracked": (),
    "bb_regressor.fc4_rt.bn.running_mean": (256,),
    "bb_regressor.fc4_rt.bn.running_var": (256,),
    "bb_regressor.fc4_rt.bn.weight": (256,),
    "bb_regressor.fc4_rt.linear.bias": (256,),
    "bb_regressor.fc4_rt.linear.weight": (256, 2304),
    "bb_regressor.iou_predictor.bias": (1,),
    "bb_regressor.iou_predictor.weight": (1, 512),
    "classifier.feature_extractor.0.weight": (512, 1024, 3, 3),
    "classifier.filter_initializer.filter_conv.bias": (512,),
    "classifier.filter_initializer.filter_conv.weight": (512, 512, 3, 3),
    "classifier.filter_optimizer.filter_reg": (1,),
    "classifier.filter_optimizer.label_map_predictor.weight": (1, 100, 1, 1),
    "classifier.filter_optimizer.log_step_length": (1,),
    "classifier.filter_optimizer.spatial_weight_predictor.weight": (1, 100, 1, 1),
    "classifier.filter_optimizer.target_mask_predictor.0.weight": (1, 100, 1, 1),
    "feature_extractor.bn1.bias": (64,),
    "feature_extractor.bn1.num_batches_tracked": (),
    "feature_extractor.bn1.running_mean": (64,),
    "feature_extractor.bn1.running_var": (64,),
    "feature_extractor.bn1.weight": (64,),
    "feature_extractor.conv1.weight": (64, 3, 7, 7),
    "feature_extractor.layer1.0.bn1.bias": (64,),
    "feature_extractor.layer1.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer1.0.bn1.running_mean": (64,),
    "feature_extractor.layer1.0.bn1.running_var": (64,),
    "feature_extractor.layer1.0.bn1.weight": (64,),
    "feature_extractor.layer1.0.bn2.bias": (64,),
    "feature_extractor.layer1.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer1.0.bn2.running_mean": (64,),
    "feature_extractor.layer1.0.bn2.running_var": (64,),
    "feature_extractor.layer1.0.bn2.weight": (64,),
    "feature_extractor.layer1.0.bn3.bias": (256,),
    "feature_extractor.layer1.0.bn3.num_batches_tracked": (),
    "feature_extractor.layer1.0.bn3.running_mean": (256,),
    "feature_extractor.layer1.0.bn3.running_var": (256,),
    "feature_extractor.layer1.0.bn3.weight": (256,),
    "feature_extractor.layer1.0.conv1.weight": (64, 64, 1, 1),
    "feature_extractor.layer1.0.conv2.weight": (64, 64, 3, 3),
    "feature_extractor.layer1.0.conv3.weight": (256, 64, 1, 1),
    "feature_extractor.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "feature_extractor.layer1.0.downsample.1.bias": (256,),
    "feature_extractor.layer1.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer1.0.downsample.1.running_mean": (256,),
    "feature_extractor.layer1.0.downsample.1.running_var": (256,),
    "feature_extractor.layer1.0.downsample.1.weight": (256,),
    "feature_extractor.layer1.1.bn1.bias": (64,),
    "feature_extractor.layer1.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer1.1.bn1.running_mean": (64,),
    "feature_extractor.layer1.1.bn1.running_var": (64,),
    "feature_extractor.layer1.1.bn1.weight": (64,),
    "feature_extractor.layer1.1.bn2.bias": (64,),
    "feature_extractor.layer1.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer1.1.bn2.running_mean": (64,),
    "feature_extractor.layer1.1.bn2.running_var": (64,),
    "feature_extractor.layer1.1.bn2.weight": (64,),
    "feature_extractor.layer1.1.bn3.bias": (256,),
    "feature_extractor.layer1.1.bn3.num_batches_tracked": (),
    "feature_extractor.layer1.1.bn3.running_mean": (256,),
    "feature_extractor.layer1.1.bn3.running_var": (256,),
    "feature_extractor.layer1.1.bn3.weight": (256,),
    "feature_extractor.layer1.1.conv1.weight": (64, 256, 1, 1),
    "feature_extractor.layer1.1.conv2.weight": (64, 64, 3, 3),
    "feature_extractor.layer1.1.conv3.weight": (256, 64, 1, 1),
    "feature_extractor.layer1.2.bn1.bias": (64,),
    "feature_extractor.layer1.2.bn1.num_batches_tracked": (),
    "feature_extractor.layer1.2.bn1.running_mean": (64,),
    "feature_extractor.layer1.2.bn1.running_var": (64,),
    "feature_extractor.layer1.2.bn1.weight": (64,),
    "feature_extractor.layer1.2.bn2.bias": (64,),
    "feature_extractor.layer1.2.bn2.num_batches_tracked": (),
    "feature_extractor.layer1.2.bn2.running_mean": (64,),
    "feature_extractor.layer1.2.bn2.running_var": (64,),
    "feature_extractor.layer1.2.bn2.weight": (64,),
    "feature_extractor.layer1.2.bn3.bias": (256,),
    "feature_extractor.layer1.2.bn3.num_batches_tracked": (),
    "feature_extractor.layer1.2.bn3.running_mean": (256,),
    "feature_extractor.layer1.2.bn3.running_var": (256,),
    "feature_extractor.layer1.2.bn3.weight": (256,),
    "feature_extractor.layer1.2.conv1.weight": (64, 256, 1, 1),
    "feature_extractor.layer1.2.conv2.weight": (64, 64, 3, 3),
    "feature_extractor.layer1.2.conv3.weight": (256, 64, 1, 1),
    "feature_extractor.layer2.0.bn1.bias": (128,),
    "feature_extractor.layer2.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer2.0.bn1.running_mean": (128,),
    "feature_extractor.layer2.0.bn1.running_var": (128,),
    "feature_extractor.layer2.0.bn1.weight": (128,),
    "feature_extractor.layer2.0.bn2.bias": (128,),
    "feature_extractor.layer2.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer2.0.bn2.running_mean": (128,),
    "feature_extractor.layer2.0.bn2.running_var": (128,),
    "feature_extractor.layer2.0.bn2.weight": (128,),
    "feature_extractor.layer2.0.bn3.bias": (512,),
    "feature_extractor.layer2.0.bn3.num_batches_tracked": (),
    "feature_extractor.layer2.0.bn3.running_mean": (512,),
    "feature_extractor.layer2.0.bn3.running_var": (512,),
    "feature_extractor.layer2.0.bn3.weight": (512,),
    "feature_extractor.layer2.0.conv1.weight": (128, 256, 1, 1),
    "feature_extractor.layer2.0.conv2.weight": (128, 128, 3, 3),
    "feature_extractor.layer2.0.conv3.weight": (512, 128, 1, 1),
    "feature_extractor.layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "feature_extractor.layer2.0.downsample.1.bias": (512,),
    "feature_extractor.layer2.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer2.0.downsample.1.running_mean": (512,),
    "feature_extractor.layer2.0.downsample.1.running_var": (512,),
    "feature_extractor.layer2.0.downsample.1.weight": (512,),
    "feature_extractor.layer2.1.bn1.bias": (128,),
    "feature_extractor.layer2.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer2.1.bn1.running_mean": (128,),
    "feature_extractor.layer2.1.bn1.running_var": (128,),
    "feature_extractor.layer2.1.bn1.weight": (128,),
    "feature_extractor.layer2.1.bn2.bias": (128,),
    "feature_extractor.layer2.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer2.1.bn2.running_mean": (128,),
    "feature_extractor.layer2.1.bn2.running_var": (128,),
    "feature_extractor.layer2.1.bn2.weight": (128,),
    "feature_extractor.layer2.1.bn3.bias": (512,),
    "feature_extractor.layer2.1.bn3.num_batches_tracked": (),
    "feature_extractor.layer2.1.bn3.running_mean": (512,),
    "feature_extractor.layer2.1.bn3.running_var": (512,),
    "feature_extractor.layer2.1.bn3.weight": (512,),
    "feature_extractor.layer2.1.conv1.weight": (128, 512, 1, 1),
    "feature_extractor.layer2.1.conv2.weight": (128, 128, 3, 3),
    "feature_extractor.layer2.1.conv3.weight": (512, 128, 1, 1),
    "feature_extractor.layer2.2.bn1.bias": (128,),
    "feature_extractor.layer2.2.bn1.num_batches_tracked": (),
    "feature_extractor.layer2.2.bn1.running_mean": (128,),
    "feature_extractor.layer2.2.bn1.running_var": (128,),
    "feature_extractor.layer2.2.bn1.weight": (128,),
    "feature_extractor.layer2.2.bn2.bias": (128,),
    "feature_extractor.layer2.2.bn2.num_batches_tracked": (),
    "feature_extractor.layer2.2.bn2.running_mean": (128,),
    "feature_extractor.layer2.2.bn2.running_var": (128,),
    "feature_extractor.layer2.2.bn2.weight": (128,),
    "feature_extractor.layer2.2.bn3.bias": (512,),
    "feature_extractor.layer2.2.bn3.num_batches_tracked": (),
    "feature_extractor.layer2.2.bn3.running_mean": (512,),
    "feature_extractor.layer2.2.bn3.running_var": (512,),
    "feature_extractor.layer2.2.bn3.weight": (512,),
    "feature_extractor.layer2.2.conv1.weight": (128, 512, 1, 1),
    "feature_extractor.layer2.2.conv2.weight": (128, 128, 3, 3),
    "feature_extractor.layer2.2.conv3.weight": (512, 128, 1, 1),
    "feature_extractor.layer2.3.bn1.bias": (128,),
    "feature_extractor.layer2.3.bn1.num_batches_tracked": (),
    "feature_extractor.layer2.3.bn1.running_mean": (128,),
    "feature_extractor.layer2.3.bn1.running_var": (128,),
    "feature_extractor.layer2.3.bn1.weight": (128,),
    "feature_extractor.layer2.3.bn2.bias": (128,),
    "feature_extractor.layer2.3.bn2.num_batches_tracked": (),
    "feature_extractor.layer2.3.bn2.running_mean": (128,),
    "feature_extractor.layer2.3.bn2.running_var": (128,),
    "feature_extractor.layer2.3.bn2.weight": (128,),
    "feature_extractor.layer2.3.bn3.bias": (512,),
    "feature_extractor.layer2.3.bn3.num_batches_tracked": (),
    "feature_extractor.layer2.3.bn3.running_mean": (512,),
    "feature_extractor.layer2.3.bn3.running_var": (512,),
    "feature_extractor.layer2.3.bn3.weight": (512,),
    "feature_extractor.layer2.3.conv1.weight": (128, 512, 1, 1),
    "feature_extractor.layer2.3.conv2.weight": (128, 128, 3, 3),
    "feature_extractor.layer2.3.conv3.weight": (512, 128, 1, 1),
    "feature_extractor.layer3.0.bn1.bias": (256,),
    "feature_extractor.layer3.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.0.bn1.running_mean": (256,),
    "feature_extractor.layer3.0.bn1.running_var": (256,),
    "feature_extractor.layer3.0.bn1.weight": (256,),
    "feature_extractor.layer3.0.bn2.bias": (256,),
    "feature_extractor.layer3.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.0.bn2.running_mean": (256,),
    "feature_extractor.layer3.0.bn2.running_var": (256,),
    "feature_extractor.layer3.0.bn2.weight": (256,),
    "feature_extractor.layer3.0.bn3.bias": (1024,),
    "feature_extractor.layer3.0.bn3.num_batches_tracked": (),
    "feature_extractor.layer3.0.bn3.running_mean": (1024,),
    "feature_extractor.layer3.0.bn3.running_var": (1024,),
    "feature_extractor.layer3.0.bn3.weight": (1024,),
    "feature_extractor.layer3.0.conv1.weight": (256, 512, 1, 1),
    "feature_extractor.layer3.0.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.0.conv3.weight": (1024, 256, 1, 1),
    "feature_extractor.layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "feature_extractor.layer3.0.downsample.1.bias": (1024,),
    "feature_extractor.layer3.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer3.0.downsample.1.running_mean": (1024,),
    "feature_extractor.layer3.0.downsample.1.running_var": (1024,),
    "feature_extractor.layer3.0.downsample.1.weight": (1024,),
    "feature_extractor.layer3.1.bn1.bias": (256,),
    "feature_extractor.layer3.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.1.bn1.running_mean": (256,),
    "feature_extractor.layer3.1.bn1.running_var": (256,),
    "feature_extractor.layer3.1.bn1.weight": (256,),
    "feature_extractor.layer3.1.bn2.bias": (256,),
    "feature_extractor.layer3.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.1.bn2.running_mean": (256,),
    "feature_extractor.layer3.1.bn2.running_var": (256,),
    "feature_extractor.layer3.1.bn2.weight": (256,),
    "feature_extractor.layer3.1.bn3.bias": (1024,),
    "feature_extractor.layer3.1.bn3.num_batches_tracked": (),
    "feature_extractor.layer3.1.bn3.running_mean": (1024,),
    "feature_extractor.layer3.1.bn3.running_var": (1024,),
    "feature_extractor.layer3.1.bn3.weight": (1024,),
    "feature_extractor.layer3.1.conv1.weight": (256, 1024, 1, 1),
    "feature_extractor.layer3.1.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.1.conv3.weight": (1024, 256, 1, 1),
    "feature_extractor.layer3.2.bn1.bias": (256,),
    "feature_extractor.layer3.2.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.2.bn1.running_mean": (256,),
    "feature_extractor.layer3.2.bn1.running_var": (256,),
    "feature_extractor.layer3.2.bn1.weight": (256,),
    "feature_extractor.layer3.2.bn2.bias": (256,),
    "feature_extractor.layer3.2.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.2.bn2.running_mean": (256,),
    "feature_extractor.layer3.2.bn2.running_var": (256,),
    "feature_extractor.layer3.2.bn2.weight": (256,),
    "feature_extractor.layer3.2.bn3.bias": (1024,),
    "feature_extractor.layer3.2.bn3.num_batches_tracked": (),
    "feature_extractor.layer3.2.bn3.running_mean": (1024,),
    "feature_extractor.layer3.2.bn3.running_var": (1024,),
    "feature_extractor.layer3.2.bn3.weight": (1024,),
    "feature_extractor.layer3.2.conv1.weight": (256, 1024, 1, 1),
    "feature_extractor.layer3.2.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.2.conv3.weight": (1024, 256, 1, 1),
    "feature_extractor.layer3.3.bn1.bias": (256,),
    "feature_extractor.layer3.3.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.3.bn1.running_mean": (256,),
    "feature_extractor.layer3.3.bn1.running_var": (256,),
    "feature_extractor.layer3.3.bn1.weight": (256,),
    "feature_extractor.layer3.3.bn2.bias": (256,),
    "feature_extractor.layer3.3.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.3.bn2.running_mean": (256,),
    "feature_extractor.layer3.3.bn2.running_var": (256,),
    "feature_extractor.layer3.3.bn2.weight": (256,),
    "feature_extractor.layer3.3.bn3.bias": (1024,),
    "feature_extractor.layer3.3.bn3.num_batches_tracked": (),
    "feature_extractor.layer3.3.bn3.running_mean": (1024,),
    "feature_extractor.layer3.3.bn3.running_var": (1024,),
    "feature_extractor.layer3.3.bn3.weight": (1024,),
    "feature_extractor.layer3.3.conv1.weight": (256, 1024, 1, 1),
    "feature_extractor.layer3.3.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.3.conv3.weight": (1024, 256, 1, 1),
    "feature_extractor.layer3.4.bn1.bias": (256,),
    "feature_extractor.layer3.4.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.4.bn1.running_mean": (256,),
    "feature_extractor.layer3.4.bn1.running_var": (256,),
    "feature_extractor.layer3.4.bn1.weight": (256,),
    "feature_extractor.layer3.4.bn2.bias": (256,),
    "feature_extractor.layer3.4.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.4.bn2.running_mean": (256,),
    "feature_extractor.layer3.4.bn2.running_var": (256,),
    "feature_extractor.layer3.4.bn2.weight": (256,),
    "feature_extractor.layer3.4.bn3.bias": (1024,),
    "feature_extractor.layer3.4.bn3.num_batches_tracked": (),
    "feature_extractor.layer3.4.bn3.running_mean": (1024,),
    "feature_extractor.layer3.4.bn3.running_var": (1024,),
    "feature_extractor.layer3.4.bn3.weight": (1024,),
    "feature_extractor.layer3.4.conv1.weight": (256, 1024, 1, 1),
    "feature_extractor.layer3.4.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.4.conv3.weight": (1024, 256, 1, 1),
    "feature_extractor.layer3.5.bn1.bias": (256,),
    "feature_extractor.layer3.5.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.5.bn1.running_mean": (256,),
    "feature_extractor.layer3.5.bn1.running_var": (256,),
    "feature_extractor.layer3.5.bn1.weight": (256,),
    "feature_extractor.layer3.5.bn2.bias": (256,),
    "feature_extractor.layer3.5.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.5.bn2.running_mean": (256,),
    "feature_extractor.layer3.5.bn2.running_var": (256,),
    "feature_extractor.layer3.5.bn2.weight": (256,),
    "feature_extractor.layer3.5.bn3.bias": (1024,),
    "feature_extractor.layer3.5.bn3.num_batches_tracked": (),
    "feature_extractor.layer3.5.bn3.running_mean": (1024,),
    "feature_extractor.layer3.5.bn3.running_var": (1024,),
    "feature_extractor.layer3.5.bn3.weight": (1024,),
    "feature_extractor.layer3.5.conv1.weight": (256, 1024, 1, 1),
    "feature_extractor.layer3.5.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.5.conv3.weight": (1024, 256, 1, 1),
    "feature_extractor.layer4.0.bn1.bias": (512,),
    "feature_extractor.layer4.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer4.0.bn1.running_mean": (512,),
    "feature_extractor.layer4.0.bn1.running_var": (512,),
    "feature_extractor.layer4.0.bn1.weight": (512,),
    "feature_extractor.layer4.0.bn2.bias": (512,),
    "feature_extractor.layer4.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer4.0.bn2.running_mean": (512,),
    "feature_extractor.layer4.0.bn2.running_var": (512,),
    "feature_extractor.layer4.0.bn2.weight": (512,),
    "feature_extractor.layer4.0.bn3.bias": (2048,),
    "feature_extractor.layer4.0.bn3.num_batches_tracked": (),
    "feature_extractor.layer4.0.bn3.running_mean": (2048,),
    "feature_extractor.layer4.0.bn3.running_var": (2048,),
    "feature_extractor.layer4.0.bn3.weight": (2048,),
    "feature_extractor.layer4.0.conv1.weight": (512, 1024, 1, 1),
    "feature_extractor.layer4.0.conv2.weight": (512, 512, 3, 3),
    "feature_extractor.layer4.0.conv3.weight": (2048, 512, 1, 1),
    "feature_extractor.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "feature_extractor.layer4.0.downsample.1.bias": (2048,),
    "feature_extractor.layer4.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer4.0.downsample.1.running_mean": (2048,),
    "feature_extractor.layer4.0.downsample.1.running_var": (2048,),
    "feature_extractor.layer4.0.downsample.1.weight": (2048,),
    "feature_extractor.layer4.1.bn1.bias": (512,),
    "feature_extractor.layer4.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer4.1.bn1.running_mean": (512,),
    "feature_extractor.layer4.1.bn1.running_var": (512,),
    "feature_extractor.layer4.1.bn1.weight": (512,),
    "feature_extractor.layer4.1.bn2.bias": (512,),
    "feature_extractor.layer4.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer4.1.bn2.running_mean": (512,),
    "feature_extractor.layer4.1.bn2.running_var": (512,),
    "feature_extractor.layer4.1.bn2.weight": (512,),
    "feature_extractor.layer4.1.bn3.bias": (2048,),
    "feature_extractor.layer4.1.bn3.num_batches_tracked": (),
    "feature_extractor.layer4.1.bn3.running_mean": (2048,),
    "feature_extractor.layer4.1.bn3.running_var": (2048,),
    "feature_extractor.layer4.1.bn3.weight": (2048,),
    "feature_extractor.layer4.1.conv1.weight": (512, 2048, 1, 1),
    "feature_extractor.layer4.1.conv2.weight": (512, 512, 3, 3),
    "feature_extractor.layer4.1.conv3.weight": (2048, 512, 1, 1),
    "feature_extractor.layer4.2.bn1.bias": (512,),
    "feature_extractor.layer4.2.bn1.num_batches_tracked": (),
    "feature_extractor.layer4.2.bn1.running_mean": (512,),
    "feature_extractor.layer4.2.bn1.running_var": (512,),
    "feature_extractor.layer4.2.bn1.weight": (512,),
    "feature_extractor.layer4.2.bn2.bias": (512,),
    "feature_extractor.layer4.2.bn2.num_batches_tracked": (),
    "feature_extractor.layer4.2.bn2.running_mean": (512,),
    "feature_extractor.layer4.2.bn2.running_var": (512,),
    "feature_extractor.layer4.2.bn2.weight": (512,),
    "feature_extractor.layer4.2.bn3.bias": (2048,),
    "feature_extractor.layer4.2.bn3.num_batches_tracked": (),
    "feature_extractor.layer4.2.bn3.running_mean": (2048,),
    "feature_extractor.layer4.2.bn3.running_var": (2048,),
    "feature_extractor.layer4.2.bn3.weight": (2048,),
    "feature_extractor.layer4.2.conv1.weight": (512, 2048, 1, 1),
    "feature_extractor.layer4.2.conv2.weight": (512, 512, 3, 3),
    "feature_extractor.layer4.2.conv3.weight": (2048, 512, 1, 1),
}

ATOM18_STATE: dict[str, tuple[int, ...]] = {
    "bb_regressor.conv3_1r.0.bias": (128,),
    "bb_regressor.conv3_1r.0.weight": (128, 128, 3, 3),
    "bb_regressor.conv3_1r.1.bias": (128,),
    "bb_regressor.conv3_1r.1.num_batches_tracked": (),
    "bb_regressor.conv3_1r.1.running_mean": (128,),
    "bb_regressor.conv3_1r.1.running_var": (128,),
    "bb_regressor.conv3_1r.1.weight": (128,),
    "bb_regressor.conv3_1t.0.bias": (256,),
    "bb_regressor.conv3_1t.0.weight": (256, 128, 3, 3),
    "bb_regressor.conv3_1t.1.bias": (256,),
    "bb_regressor.conv3_1t.1.num_batches_tracked": (),
    "bb_regressor.conv3_1t.1.running_mean": (256,),
    "bb_regressor.conv3_1t.1.running_var": (256,),
    "bb_regressor.conv3_1t.1.weight": (256,),
    "bb_regressor.conv3_2t.0.bias": (256,),
    "bb_regressor.conv3_2t.0.weight": (256, 256, 3, 3),
    "bb_regressor.conv3_2t.1.bias": (256,),
    "bb_regressor.conv3_2t.1.num_batches_tracked": (),
    "bb_regressor.conv3_2t.1.running_mean": (256,),
    "bb_regressor.conv3_2t.1.running_var": (256,),
    "bb_regressor.conv3_2t.1.weight": (256,),
    "bb_regressor.conv4_1r.0.bias": (256,),
    "bb_regressor.conv4_1r.0.weight": (256, 256, 3, 3),
    "bb_regressor.conv4_1r.1.bias": (256,),
    "bb_regressor.conv4_1r.1.num_batches_tracked": (),
    "bb_regressor.conv4_1r.1.running_mean": (256,),
    "bb_regressor.conv4_1r.1.running_var": (256,),
    "bb_regressor.conv4_1r.1.weight": (256,),
    "bb_regressor.conv4_1t.0.bias": (256,),
    "bb_regressor.conv4_1t.0.weight": (256, 256, 3, 3),
    "bb_regressor.conv4_1t.1.bias": (256,),
    "bb_regressor.conv4_1t.1.num_batches_tracked": (),
    "bb_regressor.conv4_1t.1.running_mean": (256,),
    "bb_regressor.conv4_1t.1.running_var": (256,),
    "bb_regressor.conv4_1t.1.weight": (256,),
    "bb_regressor.conv4_2t.0.bias": (256,),
    "bb_regressor.conv4_2t.0.weight": (256, 256, 3, 3),
    "bb_regressor.conv4_2t.1.bias": (256,),
    "bb_regressor.conv4_2t.1.num_batches_tracked": (),
    "bb_regressor.conv4_2t.1.running_mean": (256,),
    "bb_regressor.conv4_2t.1.running_var": (256,),
    "bb_regressor.conv4_2t.1.weight": (256,),
    "bb_regressor.fc34_3r.0.bias": (256,),
    "bb_regressor.fc34_3r.0.weight": (256, 512, 1, 1),
    "bb_regressor.fc34_3r.1.bias": (256,),
    "bb_regressor.fc34_3r.1.num_batches_tracked": (),
    "bb_regressor.fc34_3r.1.running_mean": (256,),
    "bb_regressor.fc34_3r.1.running_var": (256,),
    "bb_regressor.fc34_3r.1.weight": (256,),
    "bb_regressor.fc34_4r.0.bias": (256,),
    "bb_regressor.fc34_4r.0.weight": (256, 512, 1, 1),
    "bb_regressor.fc34_4r.1.bias": (256,),
    "bb_regressor.fc34_4r.1.num_batches_tracked": (),
    "bb_regressor.fc34_4r.1.running_mean": (256,),
    "bb_regressor.fc34_4r.1.running_var": (256,),
    "bb_regressor.fc34_4r.1.weight": (256,),
    "bb_regressor.fc3_1r.0.bias": (256,),
    "bb_regressor.fc3_1r.0.weight": (256, 128, 3, 3),
    "bb_regressor.fc3_1r.1.bias": (256,),
    "bb_regressor.fc3_1r.1.num_batches_tracked": (),
    "bb_regressor.fc3_1r.1.running_mean": (256,),
    "bb_regressor.fc3_1r.1.running_var": (256,),
    "bb_regressor.fc3_1r.1.weight": (256,),
    "bb_regressor.fc3_rt.bn.bias": (256,),
    "bb_regressor.fc3_rt.bn.num_batches_tracked": (),
    "bb_regressor.fc3_rt.bn.running_mean": (256,),
    "bb_regressor.fc3_rt.bn.running_var": (256,),
    "bb_regressor.fc3_rt.bn.weight": (256,),
    "bb_regressor.fc3_rt.linear.bias": (256,),
    "bb_regressor.fc3_rt.linear.weight": (256, 6400),
    "bb_regressor.fc4_rt.bn.bias": (256,),
    "bb_regressor.fc4_rt.bn.num_batches_tracked": (),
    "bb_regressor.fc4_rt.bn.running_mean": (256,),
    "bb_regressor.fc4_rt.bn.running_var": (256,),
    "bb_regressor.fc4_rt.bn.weight": (256,),
    "bb_regressor.fc4_rt.linear.bias": (256,),
    "bb_regressor.fc4_rt.linear.weight": (256, 2304),
    "bb_regressor.iou_predictor.bias": (1,),
    "bb_regressor.iou_predictor.weight": (1, 512),
    "feature_extractor.bn1.bias": (64,),
    "feature_extractor.bn1.num_batches_tracked": (),
    "feature_extractor.bn1.running_mean": (64,),
    "feature_extractor.bn1.running_var": (64,),
    "feature_extractor.bn1.weight": (64,),
    "feature_extractor.conv1.weight": (64, 3, 7, 7),
    "feature_extractor.layer1.0.bn1.bias": (64,),
    "feature_extractor.layer1.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer1.0.bn1.running_mean": (64,),
    "feature_extractor.layer1.0.bn1.running_var": (64,),
    "feature_extractor.layer1.0.bn1.weight": (64,),
    "feature_extractor.layer1.0.bn2.bias": (64,),
    "feature_extractor.layer1.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer1.0.bn2.running_mean": (64,),
    "feature_extractor.layer1.0.bn2.running_var": (64,),
    "feature_extractor.layer1.0.bn2.weight": (64,),
    "feature_extractor.layer1.0.conv1.weight": (64, 64, 3, 3),
    "feature_extractor.layer1.0.conv2.weight": (64, 64, 3, 3),
    "feature_extractor.layer1.1.bn1.bias": (64,),
    "feature_extractor.layer1.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer1.1.bn1.running_mean": (64,),
    "feature_extractor.layer1.1.bn1.running_var": (64,),
    "feature_extractor.layer1.1.bn1.weight": (64,),
    "feature_extractor.layer1.1.bn2.bias": (64,),
    "feature_extractor.layer1.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer1.1.bn2.running_mean": (64,),
    "feature_extractor.layer1.1.bn2.running_var": (64,),
    "feature_extractor.layer1.1.bn2.weight": (64,),
    "feature_extractor.layer1.1.conv1.weight": (64, 64, 3, 3),
    "feature_extractor.layer1.1.conv2.weight": (64, 64, 3, 3),
    "feature_extractor.layer2.0.bn1.bias": (128,),
    "feature_extractor.layer2.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer2.0.bn1.running_mean": (128,),
    "feature_extractor.layer2.0.bn1.running_var": (128,),
    "feature_extractor.layer2.0.bn1.weight": (128,),
    "feature_extractor.layer2.0.bn2.bias": (128,),
    "feature_extractor.layer2.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer2.0.bn2.running_mean": (128,),
    "feature_extractor.layer2.0.bn2.running_var": (128,),
    "feature_extractor.layer2.0.bn2.weight": (128,),
    "feature_extractor.layer2.0.conv1.weight": (128, 64, 3, 3),
    "feature_extractor.layer2.0.conv2.weight": (128, 128, 3, 3),
    "feature_extractor.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "feature_extractor.layer2.0.downsample.1.bias": (128,),
    "feature_extractor.layer2.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer2.0.downsample.1.running_mean": (128,),
    "feature_extractor.layer2.0.downsample.1.running_var": (128,),
    "feature_extractor.layer2.0.downsample.1.weight": (128,),
    "feature_extractor.layer2.1.bn1.bias": (128,),
    "feature_extractor.layer2.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer2.1.bn1.running_mean": (128,),
    "feature_extractor.layer2.1.bn1.running_var": (128,),
    "feature_extractor.layer2.1.bn1.weight": (128,),
    "feature_extractor.layer2.1.bn2.bias": (128,),
    "feature_extractor.layer2.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer2.1.bn2.running_mean": (128,),
    "feature_extractor.layer2.1.bn2.running_var": (128,),
    "feature_extractor.layer2.1.bn2.weight": (128,),
    "feature_extractor.layer2.1.conv1.weight": (128, 128, 3, 3),
    "feature_extractor.layer2.1.conv2.weight": (128, 128, 3, 3),
    "feature_extractor.layer3.0.bn1.bias": (256,),
    "feature_extractor.layer3.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.0.bn1.running_mean": (256,),
    "feature_extractor.layer3.0.bn1.running_var": (256,),
    "feature_extractor.layer3.0.bn1.weight": (256,),
    "feature_extractor.layer3.0.bn2.bias": (256,),
    "feature_extractor.layer3.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.0.bn2.running_mean": (256,),
    "feature_extractor.layer3.0.bn2.running_var": (256,),
    "feature_extractor.layer3.0.bn2.weight": (256,),
    "feature_extractor.layer3.0.conv1.weight": (256, 128, 3, 3),
    "feature_extractor.layer3.0.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "feature_extractor.layer3.0.downsample.1.bias": (256,),
    "feature_extractor.layer3.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer3.0.downsample.1.running_mean": (256,),
    "feature_extractor.layer3.0.downsample.1.running_var": (256,),
    "feature_extractor.layer3.0.downsample.1.weight": (256,),
    "feature_extractor.layer3.1.bn1.bias": (256,),
    "feature_extractor.layer3.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer3.1.bn1.running_mean": (256,),
    "feature_extractor.layer3.1.bn1.running_var": (256,),
    "feature_extractor.layer3.1.bn1.weight": (256,),
    "feature_extractor.layer3.1.bn2.bias": (256,),
    "feature_extractor.layer3.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer3.1.bn2.running_mean": (256,),
    "feature_extractor.layer3.1.bn2.running_var": (256,),
    "feature_extractor.layer3.1.bn2.weight": (256,),
    "feature_extractor.layer3.1.conv1.weight": (256, 256, 3, 3),
    "feature_extractor.layer3.1.conv2.weight": (256, 256, 3, 3),
    "feature_extractor.layer4.0.bn1.bias": (512,),
    "feature_extractor.layer4.0.bn1.num_batches_tracked": (),
    "feature_extractor.layer4.0.bn1.running_mean": (512,),
    "feature_extractor.layer4.0.bn1.running_var": (512,),
    "feature_extractor.layer4.0.bn1.weight": (512,),
    "feature_extractor.layer4.0.bn2.bias": (512,),
    "feature_extractor.layer4.0.bn2.num_batches_tracked": (),
    "feature_extractor.layer4.0.bn2.running_mean": (512,),
    "feature_extractor.layer4.0.bn2.running_var": (512,),
    "feature_extractor.layer4.0.bn2.weight": (512,),
    "feature_extractor.layer4.0.conv1.weight": (512, 256, 3, 3),
    "feature_extractor.layer4.0.conv2.weight": (512, 512, 3, 3),
    "feature_extractor.layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "feature_extractor.layer4.0.downsample.1.bias": (512,),
    "feature_extractor.layer4.0.downsample.1.num_batches_tracked": (),
    "feature_extractor.layer4.0.downsample.1.running_mean": (512,),
    "feature_extractor.layer4.0.downsample.1.running_var": (512,),
    "feature_extractor.layer4.0.downsample.1.weight": (512,),
    "feature_extractor.layer4.1.bn1.bias": (512,),
    "feature_extractor.layer4.1.bn1.num_batches_tracked": (),
    "feature_extractor.layer4.1.bn1.running_mean": (512,),
    "feature_extractor.layer4.1.bn1.running_var": (512,),
    "feature_extractor.layer4.1.bn1.weight": (512,),
    "feature_extractor.layer4.1.bn2.bias": (512,),
    "feature_extractor.layer4.1.bn2.num_batches_tracked": (),
    "feature_extractor.layer4.1.bn2.running_mean": (512,),
    "feature_extractor.layer4.1.bn2.running_var": (512,),
    "feature_extractor.layer4.1.bn2.weight": (512,),
    "feature_extractor.layer4.1.conv1.weight": (512, 512, 3, 3),
    "feature_extractor.layer4.1.conv2.weight": (512, 512, 3, 3),
}

DIMP18_CLASSIFIER_STATE: dict[str, tuple[int, ...]] = {
    "classifier.feature_extractor.0.bn1.bias": (256,),
    "classifier.feature_extractor.0.bn1.num_batches_tracked": (),
    "classifier.feature_extractor.0.bn1.running_mean": (256,),
    "classifier.feature_extractor.0.bn1.running_var": (256,),
    "classifier.feature_extractor.0.bn1.weight": (256,),
    "classifier.feature_extractor.0.bn2.bias": (256,),
    "classifier.feature_extractor.0.bn2.num_batches_tracked": (),
    "classifier.feature_extractor.0.bn2.running_mean": (256,),
    "classifier.feature_extractor.0.bn2.running_var": (256,),
    "classifier.feature_extractor.0.bn2.weight": (256,),
    "classifier.feature_extractor.0.conv1.weight": (256, 256, 3, 3),
    "classifier.feature_extractor.0.conv2.weight": (256, 256, 3, 3),
    "classifier.feature_extractor.1.weight": (256, 256, 3, 3),
    "classifier.filter_initializer.filter_conv.bias": (256,),
    "classifier.filter_initializer.filter_conv.weight": (256, 256, 3, 3),
    "classifier.filter_optimizer.filter_reg": (1,),
    "classifier.filter_optimizer.label_map_predictor.weight": (1, 100, 1, 1),
    "classifier.filter_optimizer.log_step_length": (1,),
    "classifier.filter_optimizer.spatial_weight_predictor.weight": (1, 100, 1, 1),
    "classifier.filter_optimizer.target_mask_predictor.0.weight": (1, 100, 1, 1),
}

_REF = ("conv3_1r", "conv4_1r", "fc3_1r", "fc34_3r", "fc34_4r")
_TEST = ("conv3_1t", "conv3_2t", "conv4_1t", "conv4_2t", "fc3_rt", "fc4_rt", "iou_predictor")
BBE_PREFIXES = {
    "reference": tuple(f"bb_regressor.{m}." for m in _REF),
    "test": tuple(f"bb_regressor.{m}." for m in _TEST),
}


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def superdimp_net() -> DiMPNet:
    torch.manual_seed(0)
    return superdimp()


def test_dimp50_state_dict_equals_pytracking():
    assert shapes(dimp50()) == DIMP50_STATE


def test_superdimp_is_the_dimp50_network(superdimp_net):
    assert shapes(superdimp_net) == DIMP50_STATE


def test_atom18_state_dict_equals_pytracking():
    model = atom18()
    assert isinstance(model, ATOMNet)
    assert shapes(model) == ATOM18_STATE


def test_dimp18_and_atom50_state_dicts_equal_pytracking():
    # pytracking's dimpnet18 = atom_resnet18's backbone and IoU-Net + the DiMP-18 classifier;
    # atom_resnet50 = dimpnet50 without the classifier.
    assert shapes(dimp18()) == {**ATOM18_STATE, **DIMP18_CLASSIFIER_STATE}
    assert shapes(atom50()) == {k: v for k, v in DIMP50_STATE.items() if not k.startswith("classifier.")}


@pytest.mark.parametrize(
    ("factory", "sigma"),
    [(dimp50, 0.25 / 5 * 18), (dimp18, 0.25 / 5 * 18), (superdimp, 0.25 / 6 * 22)],
)
def test_dimp_presets_use_pytracking_training_settings(factory, sigma):
    opt = factory().classifier.filter_optimizer
    assert opt.num_iter == 5
    assert torch.exp(opt.log_step_length).item() == pytest.approx(0.9)
    assert opt.filter_reg.item() == pytest.approx(0.1)
    assert opt.distance_map.num_bins == 100
    assert opt.distance_map.bin_displacement == pytest.approx(0.1)
    assert (opt.score_act, opt.mask_act) == ("relu", "sigmoid")
    assert isinstance(opt.target_mask_predictor[-1], torch.nn.Sigmoid)
    d = torch.arange(100, dtype=torch.float32) * 0.1
    gauss = torch.exp(-0.5 * (d / sigma) ** 2)
    torch.testing.assert_close(opt.label_map_predictor.weight.flatten(), gauss - gauss.min())
    torch.testing.assert_close(opt.target_mask_predictor[0].weight.flatten(), 3.0 * torch.tanh(2.0 - d))


def test_superdimp_forward_at_352(superdimp_net):
    model = superdimp_net.eval()
    box = torch.tensor([[[150.0, 140.0, 50.0, 70.0]]])  # [1, 1, 4]: one image of one sequence
    proposals = box.unsqueeze(2) + torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, -3.0, 5.0, 2.0]])  # [1, 1, 2, 4]
    with torch.no_grad():
        scores, iou = model(torch.randn(1, 1, 3, 352, 352), torch.randn(1, 1, 3, 352, 352), box, proposals)
    assert len(scores) == 6  # 5 optimizer steps + the initial filter
    assert all(s.shape == (1, 1, 23, 23) for s in scores)  # feature 22 + 1 for the even filter
    assert iou.shape == (1, 1, 2)
    assert all(torch.isfinite(s).all() for s in scores) and torch.isfinite(iou).all()


def test_build_model_dispatches_on_architecture_and_preset(monkeypatch):
    demo = load_config(CONFIGS / "demo.yaml")
    assert isinstance(build_model(demo), DiMPNet)
    tiny_atom = load_config(CONFIGS / "demo.yaml", ["model.architecture=atom", "distill.variant=B2"])
    assert isinstance(build_model(tiny_atom), ATOMNet)
    model = build_model(load_config(CONFIGS / "atom18.yaml"))
    assert isinstance(model, ATOMNet) and model.feature_extractor.name == "resnet18"
    seen = {}
    monkeypatch.setitem(dimpnet.FACTORIES["dimp"], "superdimp", lambda **kw: seen.update(kw) or "built")
    assert build_model(load_config(CONFIGS / "superdimp.yaml")) == "built"
    assert seen == {"filter_size": 4, "feature_stride": 16, "init_gauss_sigma": pytest.approx(0.25 / 6 * 22)}


def test_score_and_mask_activation_options():
    x = torch.tensor([-3.0, 0.0, 3.0])
    background, target = torch.zeros(3), torch.ones(3)
    # a = 0: (sqrt(x^2 + 4) - 2) / 2 + x / 2, a smooth ReLU; a = 1: identity
    smooth = (13**0.5 - 2) / 2
    torch.testing.assert_close(bent_ident_par(x, background), torch.tensor([smooth - 1.5, 0.0, smooth + 1.5]))
    torch.testing.assert_close(bent_ident_par(x, target), x)
    torch.testing.assert_close(leaky_relu_par(x, background), torch.tensor([0.0, 0.0, 3.0]))
    xg = x.clone().requires_grad_(True)
    bent_ident_par(xg, torch.full((3,), 0.3), 2.0).sum().backward()
    torch.testing.assert_close(xg.grad, bent_ident_par_deriv(x, torch.full((3,), 0.3), 2.0))

    model = build_dimpnet("tiny", score_act="bentpar", act_param=2.0, mask_act="linear", mask_init_factor=3.0)
    opt = model.classifier.filter_optimizer
    assert len(opt.target_mask_predictor) == 1  # no sigmoid; same parameter name (target_mask_predictor.0)
    d = torch.arange(100, dtype=torch.float32) * 0.1
    torch.testing.assert_close(opt.target_mask_predictor[0].weight.flatten(), 3.0 * torch.tanh(2.0 - d) + 0.5)
    torch.testing.assert_close(opt.score_activation(x, background), bent_ident_par(x, background, 2.0))
    with pytest.raises(ValueError, match="bentpar"):
        build_dimpnet("tiny", score_act="elu")


@pytest.fixture(scope="module")
def tiny_atom_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_atomnet("tiny").state_dict()


def fresh_atom(state: dict[str, torch.Tensor]) -> ATOMNet:
    model = build_atomnet("tiny")
    model.load_state_dict(state)
    return model


def test_atomnet_forward_shapes(tiny_atom_state):
    model = fresh_atom(tiny_atom_state).eval()
    with torch.no_grad():
        iou = model(
            torch.randn(2, 3, 3, 64, 64),
            torch.randn(1, 3, 3, 64, 64),
            torch.tensor([10.0, 12.0, 30.0, 28.0]).expand(2, 3, 4),
            torch.tensor([8.0, 10.0, 32.0, 30.0]).expand(1, 3, 5, 4),
        )
    assert iou.shape == (1, 3, 5)
    keys = set(model.state_dict())
    assert keys == {k for k in keys if k.startswith(("feature_extractor.", "bb_regressor."))}
    assert any(k.startswith("bb_regressor.") for k in keys)


@pytest.mark.parametrize("name", ["A1", "B1", "B2"])
def test_atom_variants_train_exactly_their_branch(name, tiny_atom_state, random_batch):
    model = fresh_atom(tiny_atom_state)
    apply_variant_trainability(model, name)
    model.train()
    out = distill_step(model, random_batch(), name, loss_weight_bbe=1.0)
    assert out["loss_tcl"].item() == 0.0
    torch.testing.assert_close(out["loss"], out["loss_bbe"])
    branch = VARIANTS[name].train_bbe
    if branch is None:
        assert not out["loss"].requires_grad
        assert not any(p.requires_grad for p in model.parameters())
        return
    out["loss"].backward()
    expected = {k for k, _ in model.named_parameters() if k.startswith(BBE_PREFIXES[branch])}
    assert expected
    assert {k for k, p in model.named_parameters() if p.requires_grad} == expected
    for key, p in model.named_parameters():
        if key in expected:
            assert p.grad is not None and torch.isfinite(p.grad).all(), key
        else:
            assert p.grad is None, key
    assert sum(float(p.grad.abs().sum()) for k, p in model.named_parameters() if k in expected) > 0
    assert {id(p) for p in parameter_groups(model, name)["bbe"]} == {
        id(p) for k, p in model.named_parameters() if k in expected
    }


@pytest.mark.parametrize("name", ["C1", "D1", "D2", "D3", "D4", "D5"])
def test_atom_refuses_variants_that_train_the_classifier(name, tiny_atom_state):
    model = fresh_atom(tiny_atom_state)
    with pytest.raises(ValueError, match=rf"variant {name} trains the target classifier.*ATOM has no target"):
        apply_variant_trainability(model, name)


def test_atom_b3_is_a_merge(tiny_atom_state):
    with pytest.raises(ValueError, match="merge"):
        parameter_groups(fresh_atom(tiny_atom_state), "B3")


def test_preset_label_sigma_matches_pytracking():
    assert dimpnet.preset_gauss_sigma("dimp50") == pytest.approx(0.9)
    assert dimpnet.preset_gauss_sigma("superdimp") == pytest.approx(0.25 * 22 / 6)
    assert math.isclose(dimpnet.preset_gauss_sigma("dimp18"), dimpnet.preset_gauss_sigma("dimp50"))
