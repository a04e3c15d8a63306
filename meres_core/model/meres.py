"""MERES (Fig. 3): encoders -> enhanced linguistic tokens -> visual expression extractor
-> guidance set G -> decoder. The guidance variants of Table 3 are `cfg.guidance`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from .attention import CrossAttentionBlock
from .coordinates import COORD_CHANNELS, append_coordinates
from .decoder import SegmentationDecoder
from .encoders import TextEncoder, VisionEncoder
from .expression_extractor import VisualExpressionExtractor
from .losses import dice, downsample_mask, pixel_contrastive, segmentation_bce, target_bce, upsample_logits
from .no_target import NoTargetHead
from .candidate_rank import CandidateRankPrior, gain_loss, pair_loss
from .instance_centres import MapHead, centre_focal_loss
from .position_prior import SentencePositionPrior
from .landmark_phrase import LandmarkRows, landmark_rows
from .relation_pick import RelationPick, relation_gain_loss, relation_loss


@dataclass
class MeresOutput:
    logits: torch.Tensor  # (B, 1, H/4, W/4)
    relevance: Optional[torch.Tensor]  # S (B, T, N), None when the guidance has no VE
    feature_size: tuple[int, int]  # (h, w) of F4, N = h * w
    tau: Optional[torch.Tensor]
    target_logit: Optional[torch.Tensor] = None  # t (B,) of the no-target head, when configured
    candidate_logits: Optional[torch.Tensor] = None  # (B, 1, H/4, W/4) the decoder's, before the priors
    centre_logits: Optional[torch.Tensor] = None  # (B, 1, H/4, W/4) the candidates' centres, when configured
    rank_pair_logits: Optional[torch.Tensor] = None  # (B, 4 * MAX_RANK) RankPick's, when configured
    rank_gain: Optional[torch.Tensor] = None  # (B,) RankPick's gain g(s) / SCALE, when configured
    relation_logits: Optional[torch.Tensor] = None  # (B, len(RELATIONS)) RelationPick's, when configured
    relation_gain: Optional[torch.Tensor] = None  # (B,) RelationPick's gain g(s) / SCALE, when configured


class MERES(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained_required: bool = False):
        """`pretrained_required`: pretrained encoder weights named in `cfg` that cannot be loaded are
        an error (training), not a loudly logged random init (model/pretrained.py)."""
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision, pretrained_required)
        self.text = TextEncoder(cfg.text, pretrained_required)
        d = cfg.dim
        self.text_proj = nn.Linear(self.text.dim, d)  # Q_l into the joint width D
        coord_channels = COORD_CHANNELS if cfg.coord_features else 0
        self.pixel_proj = nn.Linear(self.vision.channels[-1] + coord_channels, d)  # F4 (+ x, y) -> F_v (N, D)
        self.uses_ve = cfg.guidance in ("ve", "enhanced_le_ve")
        if cfg.guidance != "le":
            # Q^_l: language queries attend to F4 (Sec. 3.2, "enhanced by cross-attention").
            self.enhancer = nn.ModuleList(CrossAttentionBlock(d, cfg.num_heads) for _ in range(cfg.enhance_layers))
        if self.uses_ve:
            self.extractor = VisualExpressionExtractor(cfg.extractor, d, cfg.num_heads)
        self.decoder = SegmentationDecoder(self.vision.channels, cfg.decoder_dims, d, cfg.num_heads,
                                           coord_features=cfg.coord_features)
        self.position_prior = SentencePositionPrior(self.text.dim) if cfg.sentence_position_prior else None
        self.candidate_rank = (CandidateRankPrior(self.text.dim, cfg.candidate_rank_hidden,
                                                  cfg.candidate_rank_pick)
                               if cfg.candidate_rank_prior else None)
        self.centre_head = MapHead(cfg.decoder_dims[-1]) if cfg.candidate_centres else None
        self.relation_pick = RelationPick(self.text.dim) if cfg.relation_pick else None
        self.no_target = (NoTargetHead(cfg.decoder_dims[0], cfg.decoder_dims[-1], self.text.dim)
                          if cfg.no_target_head else None)

    # -- the three stages, separable so inference can share one image over many sentences

    def tokenize(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text.tokenize(sentences, device=self.text_proj.weight.device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> Q_l (B, T, D_t) and validity (B, T)."""
        return self.text(input_ids, attention_mask)

    def encode_image(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> [F1..F4]."""
        return self.vision(images)

    def landmark_rows(self, sentences: list[str], images=None, known=None) -> LandmarkRows:
        """The sentences and, with the relation pick, the landmark phrases they name as rows of their own
        (landmark_phrase.landmark_rows: images, known)."""
        if self.relation_pick is None:
            known = [False] * len(sentences)
        return landmark_rows(sentences, images, known)

    def decode(self, features: list[torch.Tensor], text: torch.Tensor, text_valid: torch.Tensor,
               landmark_index: Optional[torch.Tensor] = None) -> MeresOutput:
        """features of 1 or B images; text (B, T, D_t). One image is shared by all B sentences.
        landmark_index (B,) long: the row of the landmark phrase each sentence names, -1 for none
        (`landmark_rows`); None: none names one.

        Features of one image stay batch 1: what depends only on the image (F_v, the keys and
        values of pixel attention, the decoder's image-side convolutions) runs once and is
        broadcast over the sentences, so each extra sentence costs only its own part.
        """
        out, (coarse, fine) = self._guide(features, text, text_valid)
        # Both priors read the candidates off the decoder's own mask, before either is added.
        rank_prior = None
        if self.centre_head is not None:
            out.centre_logits = self.centre_head(fine)
        if self.candidate_rank is not None:
            rank_prior, pick = self.candidate_rank(out.logits, text, text_valid, out.centre_logits)
            if pick is not None:
                out.rank_pair_logits, out.rank_gain = pick
            out.candidate_logits = out.logits
        if self.relation_pick is not None:
            if landmark_index is None:
                landmark_index = torch.full((text.shape[0],), -1, dtype=torch.long, device=text.device)
            landmark_logits = out.logits[landmark_index.clamp(min=0)]  # (B, 1, h, w) each landmark phrase's map
            relation_prior, (out.relation_logits, out.relation_gain) = self.relation_pick(
                out.logits, out.centre_logits, landmark_logits, landmark_index >= 0, text, text_valid)
            rank_prior = rank_prior + relation_prior
        if self.position_prior is not None:
            out.logits = self.position_prior(out.logits, text, text_valid)
        if rank_prior is not None:
            out.logits = out.logits + rank_prior
        if self.no_target is not None:
            out.logits, out.target_logit = self.no_target(out.logits, coarse, fine, text, text_valid)
        return out

    def _guide(self, features: list[torch.Tensor], text: torch.Tensor,
               text_valid: torch.Tensor) -> tuple[MeresOutput, tuple[torch.Tensor, torch.Tensor]]:
        """Enhancer, extractor and decoder for the configured guidance (Table 3); also the decoder's maps."""
        b = text.shape[0]
        f4 = append_coordinates(features[-1]) if self.cfg.coord_features else features[-1]
        h, w = f4.shape[-2:]
        pixels = self.pixel_proj(f4.flatten(2).transpose(1, 2))  # F_v (1 or B, N, D)
        q_l = self.text_proj(text)  # Q_l (B, T, D)
        pad = ~text_valid

        if self.cfg.guidance == "le":
            return self._decode(features, q_l, pad, None, (h, w))
        q_hat_l = q_l
        for block in self.enhancer:
            q_hat_l = block(q_hat_l, pixels)  # Q^_l (B, T, D)
        q_hat_l = q_hat_l * text_valid[..., None]

        if self.cfg.guidance == "enhanced_le":
            return self._decode(features, q_hat_l, pad, None, (h, w))
        if self.cfg.guidance == "enhanced_le_all_pixels":
            guidance = torch.cat([q_hat_l, pixels.expand(b, -1, -1)], dim=1)
            guidance_pad = torch.cat([pad, pad.new_zeros(b, pixels.shape[1])], dim=1)
            return self._decode(features, guidance, guidance_pad, None, (h, w))

        ve = self.extractor(pixels, q_hat_l, text_valid)  # Q^_v (B, T, D)
        if self.cfg.guidance == "ve":
            guidance, guidance_pad = ve.tokens, ~ve.valid
        else:  # G = {Q^_l, Q^_v}
            guidance = torch.cat([q_hat_l, ve.tokens], dim=1)
            guidance_pad = torch.cat([pad, ~ve.valid], dim=1)
        return self._decode(features, guidance, guidance_pad, ve.relevance, (h, w))

    def _decode(self, features, guidance, guidance_pad, relevance,
                size) -> tuple[MeresOutput, tuple[torch.Tensor, torch.Tensor]]:
        logits, maps = self.decoder(features, guidance, guidance_pad)
        tau = self.extractor.tau if self.uses_ve else None
        return MeresOutput(logits=logits, relevance=relevance, feature_size=size, tau=tau), maps

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_index: Optional[torch.Tensor] = None, landmark_index: Optional[torch.Tensor] = None
                ) -> MeresOutput:
        """images (I, 3, H, W); sentences (B, T). image_index (B,): each sentence's image, when
        several sentences share one (training runs of one scene); None: I = B, one each. landmark_index
        (B,): the row of each sentence's landmark phrase, -1 for none (`landmark_rows`)."""
        text, valid = self.encode_text(input_ids, attention_mask)
        features = self.encode_image(images)
        if image_index is not None:
            features = [f[image_index] for f in features]  # (B, C_i, H_i, W_i)
        return self.decode(features, text, valid, landmark_index)

    def compute_loss(self, out: MeresOutput, masks: torch.Tensor,
                     ranked_masks: Optional[torch.Tensor] = None,
                     ranked_centres: Optional[torch.Tensor] = None,
                     landmark_centres: Optional[torch.Tensor] = None,
                     relations: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """masks (B, H, W) in {0, 1}. Total = BCE + lambda * L_c (Eq. 3) [+ dice_weight * Dice]
        [+ no_target_weight * BCE(t, target present)] [+ candidate_weight * BCE(decoder's logits before
        the priors, ranked_masks)] [+ centre_weight * focal(centre heatmap, ranked_centres)] [+ the rank
        and relation picks' losses]; ranked_masks (B, H, W): what each sentence's qualifier ranks,
        ranked_centres (B, M, 2) their centroids (x, y in [-1, 1], NaN rows for none); landmark_centres
        (B, 2) the centroid of the landmark a relation sentence names (NaN for none), relations
        (B,) the relation it names (relation_pick.relation_ids, -1 for none)."""
        logits = upsample_logits(out.logits, masks.shape[-2:])
        bce = segmentation_bce(logits, masks)
        losses = {"bce": bce, "loss": bce}
        if self.cfg.dice_weight:
            losses["dice"] = dice(logits, masks)
            losses["loss"] = losses["loss"] + self.cfg.dice_weight * losses["dice"]
        if self.cfg.contrastive_loss and out.relevance is not None:
            positives = downsample_mask(masks, out.feature_size).flatten(1)  # Z+ (B, N)
            contrastive = pixel_contrastive(out.relevance[:, 0], out.tau, positives)
            losses["contrastive"] = contrastive
            losses["loss"] = losses["loss"] + self.cfg.contrastive_weight * contrastive
        if out.target_logit is not None:
            losses["no_target"] = target_bce(out.target_logit, masks)
            losses["loss"] = losses["loss"] + self.cfg.no_target_weight * losses["no_target"]
        if self.cfg.candidate_weight and out.candidate_logits is not None and ranked_masks is not None:
            candidates = upsample_logits(out.candidate_logits, ranked_masks.shape[-2:])
            losses["candidates"] = segmentation_bce(candidates, ranked_masks)
            losses["loss"] = losses["loss"] + self.cfg.candidate_weight * losses["candidates"]
        if out.centre_logits is not None and ranked_centres is not None:
            losses["centres"] = centre_focal_loss(out.centre_logits, ranked_centres)
            losses["loss"] = losses["loss"] + self.cfg.centre_weight * losses["centres"]
        if self.cfg.candidate_pick_weight and out.rank_pair_logits is not None and ranked_centres is not None:
            losses["pick"] = pair_loss(out.rank_pair_logits, masks, ranked_centres, landmark_centres)
            losses["loss"] = losses["loss"] + self.cfg.candidate_pick_weight * losses["pick"]
        if self.cfg.candidate_gain_weight and out.rank_gain is not None and ranked_centres is not None:
            losses["pick_gain"] = gain_loss(out.rank_gain, ranked_centres, landmark_centres)
            losses["loss"] = losses["loss"] + self.cfg.candidate_gain_weight * losses["pick_gain"]
        if out.relation_logits is not None and landmark_centres is not None and relations is not None:
            # The landmark phrases are rows of the batch (landmark_rows), trained by their own masks.
            relation = {"relation": (self.cfg.relation_pick_weight,
                                     relation_loss(out.relation_logits, relations)),
                        "relation_gain": (self.cfg.relation_gain_weight,
                                          relation_gain_loss(out.relation_gain, landmark_centres))}
            for key, (weight, value) in relation.items():
                losses[key] = value
                losses["loss"] = losses["loss"] + weight * value
        return losses


def count_parameters(model: MERES) -> dict[str, int]:
    """Parameter counts split as vision / text / extractor (incl. enhancer) / decoder."""
    def n(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    extractor = n(getattr(model, "enhancer", None)) + n(getattr(model, "extractor", None))
    counts = {
        "vision": n(model.vision) + n(model.pixel_proj),
        "text": n(model.text) + n(model.text_proj),
        "extractor": extractor,
        "decoder": (n(model.decoder) + n(model.position_prior) + n(model.candidate_rank) + n(model.centre_head)
                    + n(model.relation_pick) + n(model.no_target)),
    }
    counts["total"] = sum(counts.values())
    return counts
