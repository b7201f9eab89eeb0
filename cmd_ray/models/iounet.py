"""Box estimator (BBE): ATOM's IoU-Net, the ``bb_regressor`` of DiMPNet.

Two branches over two backbone layers (``layer2`` at stride 8, ``layer3`` at stride 16):

- reference branch (suffix ``r``: ``conv3_1r``, ``conv4_1r``, ``fc3_1r``, ``fc34_3r``, ``fc34_4r``)
  pools the reference target box (3×3 at 1/8, 1×1 at 1/16) into two modulation vectors;
- test branch (suffix ``t``: ``conv3_1t``, ``conv3_2t``, ``conv4_1t``, ``conv4_2t``, ``fc3_rt``,
  ``fc4_rt``, ``iou_predictor``) multiplies the test features channel-wise by the modulation
  vectors, pools each proposal (5×5 at 1/8, 3×3 at 1/16) and regresses its IoU.

No module runs on both frames (the reference modules see only the reference features, the test modules only the
test features and the modulation vectors), so a row that trains one branch trains it through that branch alone.

Conv blocks are ``Sequential(Conv2d, BatchNorm2d, ReLU)`` (keys ``.0``, ``.1``), linear blocks have
``linear``, ``bn``, ``relu`` — pytracking's names, so ATOM/DiMP weights load unchanged.

Layout (pytracking's): backbone features of several images arrive either as ``[N, B, C, H, W]`` or
flattened image-major as ``[N*B, C, H, W]`` (row ``n*B + b`` is image ``n`` of sequence ``b``);
boxes ``[N, B, 4]`` and proposals ``[N, B, P, 4]`` are ``x, y, w, h`` in image pixels. Only the first
reference image is used for the modulation.
"""

from __future__ import annotations

import torch
from torch import nn

from cmd_ray.models.pooling import pool_boxes
from cmd_ray.vocabulary import BBE_REFERENCE_MODULES, BBE_TEST_MODULES


def conv_block(in_planes: int, out_planes: int, kernel_size: int = 3, padding: int = 1) -> nn.Sequential:
    """``Conv2d(bias) -> BatchNorm2d -> ReLU``, stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=1, padding=padding, bias=True),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


class LinearBlock(nn.Module):
    """Fully connected layer over a ``[M, C, s, s]`` input, BatchNorm and ReLU -> ``[M, out_planes]``."""

    def __init__(self, in_planes: int, out_planes: int, input_sz: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_planes * input_sz * input_sz, out_planes, bias=True)
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        x = self.relu(self.bn(x.reshape(*x.shape, 1, 1)))
        return x.reshape(x.shape[0], -1)


class AtomIoUNet(nn.Module):
    """ATOM IoU-Net.

    Args:
        input_dim: channels of the two backbone layers (``layer2``, ``layer3``).
        pred_input_dim: channels of the modulated test features (and modulation vectors).
        pred_inter_dim: widths of ``fc3_rt`` and ``fc4_rt``.
        hidden_dim: width of ``fc3_1r``, ``conv4_1r``, ``conv3_1t``, ``conv4_1t`` (256 in pytracking).
        ref3_dim: width of ``conv3_1r`` (128 in pytracking).
    """

    REFERENCE_MODULES = BBE_REFERENCE_MODULES
    TEST_MODULES = BBE_TEST_MODULES

    def __init__(
        self,
        input_dim: tuple[int, int] = (128, 256),
        pred_input_dim: tuple[int, int] = (256, 256),
        pred_inter_dim: tuple[int, int] = (256, 256),
        hidden_dim: int = 256,
        ref3_dim: int = 128,
    ) -> None:
        super().__init__()
        self.conv3_1r = conv_block(input_dim[0], ref3_dim)
        self.conv3_1t = conv_block(input_dim[0], hidden_dim)
        self.conv3_2t = conv_block(hidden_dim, pred_input_dim[0])
        self.fc3_1r = conv_block(ref3_dim, hidden_dim, kernel_size=3, padding=0)
        self.conv4_1r = conv_block(input_dim[1], hidden_dim)
        self.conv4_1t = conv_block(input_dim[1], hidden_dim)
        self.conv4_2t = conv_block(hidden_dim, pred_input_dim[1])
        self.fc34_3r = conv_block(2 * hidden_dim, pred_input_dim[0], kernel_size=1, padding=0)
        self.fc34_4r = conv_block(2 * hidden_dim, pred_input_dim[1], kernel_size=1, padding=0)
        self.fc3_rt = LinearBlock(pred_input_dim[0], pred_inter_dim[0], 5)
        self.fc4_rt = LinearBlock(pred_input_dim[1], pred_inter_dim[1], 3)
        self.iou_predictor = nn.Linear(pred_inter_dim[0] + pred_inter_dim[1], 1, bias=True)

        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight.data, mode="fan_in")
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.uniform_()  # pytracking's (pre torch 1.2) BatchNorm init
                m.bias.data.zero_()

    def forward(
        self,
        feat_ref: list[torch.Tensor],
        feat_test: list[torch.Tensor],
        bb_ref: torch.Tensor,
        proposals: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the IoU of each test proposal with the target shown in the first reference image.

        Args:
            feat_ref: ``[layer2, layer3]`` of the reference images, each ``[Ntr, B, C, H, W]`` or ``[Ntr*B, C, H, W]``.
            feat_test: ``[layer2, layer3]`` of the test images, each ``[Nte, B, C, H, W]`` or ``[Nte*B, C, H, W]``.
            bb_ref: reference boxes ``[Ntr, B, 4]`` (x, y, w, h px).
            proposals: test proposals ``[Nte, B, P, 4]`` (x, y, w, h px).

        Returns:
            predicted IoU (trained against ``2*IoU - 1``) ``[Nte, B, P]``.
        """
        if bb_ref.dim() != 3 or proposals.dim() != 4:
            raise ValueError("expected bb_ref [Ntr, B, 4] and proposals [Nte, B, P, 4]")
        num_test, num_seq = proposals.shape[:2]
        first_ref = [f[0] if f.dim() == 5 else f.reshape(-1, num_seq, *f.shape[-3:])[0] for f in feat_ref]
        modulation = self.get_modulation(first_ref, bb_ref[0])
        iou_feat = self.get_iou_feat(feat_test)
        # Repeat each sequence's modulation for its Nte test images (image-major).
        modulation = [
            m.reshape(1, num_seq, -1).expand(num_test, -1, -1).reshape(num_test * num_seq, -1) for m in modulation
        ]
        pred = self.predict_iou(modulation, iou_feat, proposals.reshape(num_test * num_seq, -1, 4))
        return pred.reshape(num_test, num_seq, -1)

    def get_modulation(self, feat: list[torch.Tensor], bb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference branch: ``[layer2 [B, C2, H, W], layer3 [B, C3, h, w]]``, boxes ``[B, 4]``.

        Returns the two modulation vectors, each ``[B, D, 1, 1]``.
        """
        feat3_r, feat4_r = feat
        c3_r = self.conv3_1r(feat3_r)
        roi3r = pool_boxes(c3_r, bb, 3, 1.0 / 8)
        c4_r = self.conv4_1r(feat4_r)
        roi4r = pool_boxes(c4_r, bb, 1, 1.0 / 16)
        fc3_r = self.fc3_1r(roi3r)
        fc34_r = torch.cat((fc3_r, roi4r), dim=1)
        return self.fc34_3r(fc34_r), self.fc34_4r(fc34_r)

    def get_iou_feat(self, feat: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Test branch features: ``[layer2, layer3]`` (4-D or 5-D) -> two ``[M, D, H, W]`` maps, image-major."""
        feat3_t, feat4_t = (f.reshape(-1, *f.shape[-3:]) for f in feat)
        return self.conv3_2t(self.conv3_1t(feat3_t)), self.conv4_2t(self.conv4_1t(feat4_t))

    def predict_iou(
        self,
        modulation: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor],
        feat: tuple[torch.Tensor, torch.Tensor],
        proposals: torch.Tensor,
    ) -> torch.Tensor:
        """Modulation ``2 × [M, D]``, IoU features ``2 × [M, D, H, W]``, proposals ``[M, P, 4]`` -> IoU ``[M, P]``."""
        mod3, mod4 = modulation
        c3_t, c4_t = feat
        batch = c3_t.shape[0]
        num_proposals = proposals.shape[1]
        c3_att = c3_t * mod3.reshape(batch, -1, 1, 1)
        c4_att = c4_t * mod4.reshape(batch, -1, 1, 1)
        roi3t = pool_boxes(c3_att, proposals, 5, 1.0 / 8)
        roi4t = pool_boxes(c4_att, proposals, 3, 1.0 / 16)
        fc34_rt = torch.cat((self.fc3_rt(roi3t), self.fc4_rt(roi4t)), dim=1)
        return self.iou_predictor(fc34_rt).reshape(batch, num_proposals)
