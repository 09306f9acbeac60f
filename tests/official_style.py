"""An independent Vim forward pass, written from a raw state dict in the structure of the official code:
channel-major [B, E, L] tensors, the backward direction computed on flipped copies of x and z, the causal conv as
a padded nn.functional.conv1d sliced to L, and the scan as a per-step loop over precomputed decays. It shares no
code with the package, so agreement with it checks the package's reordering (original-order backward direction,
token-major layout, fused pieces) end to end."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps=1e-5):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def scan_channel_major(u, delta, A, B, C, D, z, delta_bias):
    """u, delta, z: [B, E, L]; A: [E, N]; B, C: [B, N, L]."""
    delta = F.softplus(delta + delta_bias[None, :, None])
    decay = torch.exp(delta[..., None] * A[None, :, None, :])                   # [B, E, L, N]
    drive = (delta * u)[..., None] * B.transpose(1, 2)[:, None, :, :]           # [B, E, L, N]
    state = torch.zeros_like(decay[:, :, 0])
    outs = []
    for t in range(u.shape[-1]):
        state = decay[:, :, t] * state + drive[:, :, t]
        outs.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(outs, dim=-1) + u * D[None, :, None]
    return y * F.silu(z)


def mixer(hidden, p):
    """hidden [B, L, D]; p(name) -> tensor of this layer's mixer."""
    batch, length, _ = hidden.shape
    xz = torch.einsum("ed,bld->bel", p("in_proj.weight"), hidden)              # [B, 2E, L]
    inner = xz.shape[1] // 2
    state = p("A_log").shape[1]

    def branch(xz, sfx):
        x, z = xz.chunk(2, dim=1)
        x = F.conv1d(x, p(f"conv1d{sfx}.weight"), p(f"conv1d{sfx}.bias"), padding=3, groups=inner)[..., :length]
        x = F.silu(x)
        x_dbl = torch.einsum("ke,bel->bkl", p(f"x_proj{sfx}.weight"), x)
        rank = x_dbl.shape[1] - 2 * state
        dt, B, C = x_dbl.split([rank, state, state], dim=1)
        delta = torch.einsum("er,brl->bel", p(f"dt_proj{sfx}.weight"), dt)
        A_log = p("A_log") if sfx == "" else p("A_b_log")
        return scan_channel_major(x, delta, -torch.exp(A_log), B, C, p("D" + sfx), z, p(f"dt_proj{sfx}.bias"))

    out = branch(xz, "")
    out_b = branch(xz.flip([-1]), "_b")
    y = (out + out_b.flip([-1])) / 2
    return torch.einsum("de,bel->bld", p("out_proj.weight"), y)


def forward(sd, images, stride=16, eps=1e-5):
    """Logits of the official Vim (middle class token, fp32) from state dict ``sd``; also returns the features."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    batch, num_patches, _ = x.shape
    token_position = num_patches // 2
    x = torch.cat([x[:, :token_position], sd["cls_token"].expand(batch, -1, -1), x[:, token_position:]], dim=1)
    x = x + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    residual, hidden = None, x
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        hidden = mixer(rms_norm(residual, sd[f"layers.{i}.norm.weight"], eps),
                       lambda n, i=i: sd[f"layers.{i}.mixer.{n}"])
    features = rms_norm(residual + hidden, sd["norm_f.weight"], eps)
    logits = features[:, token_position] @ sd["head.weight"].T + sd["head.bias"]
    return logits, features
