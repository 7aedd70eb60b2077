"""The finite transformer (SelfAttention's torch module in the NTK parametrization, token-wise Linear layers,
residuals, LayerNorm) converges to the infinite-attention kernel as the width grows (Monte Carlo over
initializations, within standard errors plus the O(1/width) finite-width bias), and bad inputs are refused with an
error naming the layer.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.layers import LayerError, SelfAttention, TokenLinear
from ntkit.layers.masking import Mask

f64 = torch.float64


def transformer(blocks: int = 1, **attention) -> nk.Sequential:
    """Token-wise Linear embedding, then blocks of Residual(SelfAttention), LayerNorm, Residual(token-wise ReLU MLP),
    LayerNorm; global average, Linear."""
    layers = [TokenLinear(b_std=0.1)]
    for _ in range(blocks):
        layers += [nk.Residual(SelfAttention(b_std=0.1, **attention)), nk.LayerNorm(),
                   nk.Residual(TokenLinear(b_std=0.1), nk.ReLU(), TokenLinear(b_std=0.1)), nk.LayerNorm()]
    return nk.Sequential(*layers, nk.GlobalAvgPool(), nk.Linear())


def inputs(n: int = 3, shape: tuple[int, ...] = (4, 5), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, dtype=f64, generator=torch.Generator().manual_seed(seed))


def monte_carlo_gap(arch: nk.Sequential, X: torch.Tensor, width: int, samples: int) -> float:
    """max |mean empirical NTK - Theta| / (5 standard errors + 4 / width of the kernel's scale): <= 1 when the finite
    networks agree with the kernel (Theorem 1; the bias of a width-n network is O(1 / n))."""
    K = arch.kernel(X)
    values = torch.stack([nk.empirical_ntk(arch.network(tuple(X.shape[1:]), width=width, seed=s, dtype=f64), X,
                                           mode="trace", method="jacobian") for s in range(samples)])
    mean, stderr = values.mean(0), values.std(0) / samples**0.5
    allowed = 5 * stderr + 4.0 / width * float(K.abs().max())
    return float(((mean - K).abs() / allowed).max())


def test_transformer_block_converges_to_the_kernel():
    assert monte_carlo_gap(transformer(n_heads=2, pos_emb_type="sum"), inputs(), width=256, samples=6) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("width", [64, 512])
@pytest.mark.parametrize("attention", [{},
                                       {"attention_mechanism": "relu", "pos_emb_type": "concat", "val_pos_emb": True},
                                       {"attention_mechanism": "identity", "linear_scaling": False}])
def test_transformers_converge_at_two_widths(width, attention):
    assert monte_carlo_gap(transformer(2, **attention), inputs(), width=width, samples=16) <= 1


def test_output_covariance_is_the_nngp():
    """The outputs of many finite networks (one attention layer on the inputs, a decaying positional embedding in the
    values) have the NNGP as covariance: within 5 standard errors plus the O(1 / width) bias."""
    arch = nk.Sequential(SelfAttention(b_std=0.2, pos_emb_type="sum", val_pos_emb=True,
                                       pos_emb_decay_fn=lambda d: (1.0 + d) ** -1.0), nk.ReLU(), nk.GlobalAvgPool(),
                         nk.Linear())
    X, width, samples = inputs(3, (3, 4)), 128, 200
    nngp = arch.kernel(X, get="nngp")
    with torch.no_grad():
        outs = torch.stack([arch.network((3, 4), width=width, seed=s, dtype=f64)(X)[:, 0] for s in range(samples)])
    products = outs[:, :, None] * outs[:, None, :]
    mean, stderr = products.mean(0), products.std(0) / samples**0.5
    assert bool(((mean - nngp).abs() <= 5 * stderr + 4.0 / width * float(nngp.abs().max())).all())


def test_attention_over_a_flat_input_is_refused():
    with pytest.raises(LayerError, match=r"SelfAttention \(layer 1\).*positions"):
        nk.Sequential(nk.Linear(), SelfAttention(), nk.Linear()).kernel(torch.randn(2, 3, dtype=f64))


def test_settings_without_a_closed_form_are_refused():
    with pytest.raises(LayerError, match="linear_scaling=False.*identity"):
        SelfAttention(linear_scaling=False)
    with pytest.raises(ValueError, match="attention_mechanism"):
        SelfAttention(attention_mechanism="sigmoid")
    with pytest.raises(ValueError, match="pos_emb_type"):
        SelfAttention(pos_emb_type="rotary")
    with pytest.raises(LayerError, match="n_chan_pos_emb"):
        SelfAttention(pos_emb_type="concat", n_chan_pos_emb=3)
    with pytest.raises(TypeError, match="pos_emb_decay_fn"):
        SelfAttention(pos_emb_type="sum", pos_emb_decay_fn=2.0)


def test_the_kernel_does_not_depend_on_the_heads():
    X = inputs()
    torch.testing.assert_close(transformer(n_heads=1).kernel(X), transformer(n_heads=3).kernel(X), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 4)])
def test_token_linear_is_a_one_by_one_convolution(shape):
    """TokenLinear's kernels equal Conv1d(1) / Conv2d(1)'s (the window map with one tap), bitwise, before pooling and
    before attention."""
    X, Y = inputs(3, shape), inputs(2, shape, seed=2)
    conv = nk.Conv1d if len(shape) == 2 else nk.Conv2d
    for tail in ([nk.ReLU(), nk.Flatten(), nk.Linear()], [SelfAttention(), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear()]):
        ours = nk.Sequential(nk.layers.TokenLinear(1.2, 0.3), *tail).kernel(X, Y, get=("nngp", "ntk"))
        theirs = nk.Sequential(conv(1, W_std=1.2, b_std=0.3), *tail).kernel(X, Y, get=("nngp", "ntk"))
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_token_linear_refuses_flat_inputs():
    with pytest.raises(LayerError, match=r"TokenLinear \(layer 1\).*use Linear"):
        nk.Sequential(nk.Linear(), nk.layers.TokenLinear(), nk.Linear()).kernel(torch.randn(2, 3, dtype=f64))


@pytest.mark.parametrize("module", [torch.nn.MultiheadAttention(8, 2, batch_first=True),
                                    torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)])
def test_infinite_refuses_torch_attention_naming_the_module_and_the_alternative(module):
    with pytest.raises(LayerError, match=r"module 1 \((MultiheadAttention|TransformerEncoderLayer)\).*SelfAttention"):
        nk.infinite(torch.nn.Sequential(torch.nn.Linear(8, 8), module))


def padded(lengths: list[int], shape: tuple[int, ...] = (2, 6), seed: int = 3) -> torch.Tensor:
    """Sequences with zero vectors after each length (the padding a Mask layer reads)."""
    X = inputs(len(lengths), shape, seed)
    for x, length in zip(X, lengths, strict=True):
        x[:, length:] = 0.0
    return X


def masked_encoder(mask: bool = True, **attention) -> nk.Sequential:
    return nk.Sequential(*([Mask()] if mask else []), *transformer(**attention).layers)


def test_a_padded_sequence_has_the_kernel_of_the_sequence_without_padding():
    """Kernels of padded sequences (Mask) equal those of the truncated sequences (no padding at all), NNGP and NTK,
    a pair of equal lengths and an example with itself, to float64 rounding."""
    X = padded([6, 4, 4, 3])
    full = masked_encoder().kernel(X, get=("nngp", "ntk"))
    plain = masked_encoder(mask=False)
    pair = plain.kernel(X[1:2, :, :4].clone(), X[2:3, :, :4].clone(), get=("nngp", "ntk"))
    alone = plain.kernel(X[3:4, :, :3].clone(), get=("nngp", "ntk"))
    for K, P, A in zip(full, pair, alone, strict=True):
        torch.testing.assert_close(K[1, 2], P[0, 0], rtol=1e-12, atol=0)
        torch.testing.assert_close(K[3, 3], A[0, 0], rtol=1e-12, atol=0)


def test_the_finite_masked_network_ignores_the_padding():
    """The finite network (no positional embeddings: its weights do not depend on the length) gives a padded sequence
    the output of the sequence without padding, whatever the padding's length."""
    X = padded([4, 4], (2, 7))
    long_net = masked_encoder().network((2, 7), width=16, seed=0, dtype=f64)
    short_net = masked_encoder().network((2, 4), width=16, seed=0, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(long_net(X), short_net(X[:, :, :4].clone()), rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_masked_transformers_converge_to_the_masked_kernel():
    arch, X = masked_encoder(n_heads=2, pos_emb_type="sum"), padded([6, 3, 5])
    for width in (64, 512):
        assert monte_carlo_gap(arch, X, width=width, samples=16) <= 1


def test_mask_must_be_the_first_layer_on_positions():
    with pytest.raises(LayerError, match=r"Mask \(layer 1\) must be the first layer"):
        nk.Sequential(TokenLinear(), Mask(), nk.GlobalAvgPool(), nk.Linear()).kernel(padded([6, 2]))
    with pytest.raises(LayerError, match=r"Mask \(layer 0\) needs inputs with positions"):
        nk.Sequential(Mask(), nk.Linear()).kernel(torch.randn(2, 3, dtype=f64))


def test_a_mask_of_another_shape_is_refused_by_the_finite_layers():
    net = masked_encoder().network((2, 6), width=8, seed=0, dtype=f64)
    with torch.no_grad():
        net[0](padded([6, 2]))                     # the Mask records positions of 2 examples of length 6
        with pytest.raises(LayerError, match="Mask recorded positions of shape"):
            net[2](torch.randn(3, 8, 5, dtype=f64))     # the attention block, fed 3 examples of length 5


def test_scales_beyond_the_range_are_a_kernel_overflow_naming_the_layer():
    with pytest.raises(nk.KernelOverflowError, match=r"layer 1 \(SelfAttention\)"):
        nk.Sequential(TokenLinear(), SelfAttention(W_out_std=1e200), nk.GlobalAvgPool(), nk.Linear()).kernel(inputs())


class _HandAttention(torch.nn.Module):
    """Softmax attention written by hand, as models often do."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 8**0.5
        return torch.softmax(scores, dim=-1) @ self.v(x)


@pytest.mark.parametrize("module, name", [(torch.nn.MultiheadAttention(8, 2, batch_first=True), "MultiheadAttention"),
                                          (torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
                                           "TransformerEncoderLayer"),
                                          (torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(
                                              8, 2, 16, batch_first=True), 2, enable_nested_tensor=False),
                                           "TransformerEncoder")])
def test_the_refusal_says_what_is_not_supported_and_that_the_alternative_is_another_network(module, name):
    with pytest.raises(LayerError) as error:
        nk.infinite(torch.nn.Sequential(torch.nn.Linear(8, 8), module))
    text = str(error.value)
    assert f"module 1 ({name})" in text
    for part in ("sqrt(d)", "independent query and key weights", "no closed form", "linear_scaling=True",
                 "DIFFERENT networks, not the limit of this one"):
        assert part in text, part
    assert ("linear1 / linear2 as TokenLinear" in text) == (name == "TransformerEncoderLayer")


def test_attention_written_by_hand_is_refused_at_a_product_of_computed_values():
    match = r"node matmul_1 .* of _HandAttention: @ has no infinite-width counterpart here. If it computes attention"
    with pytest.raises(LayerError, match=match + r".*DIFFERENT networks"):
        nk.infinite(_HandAttention())
