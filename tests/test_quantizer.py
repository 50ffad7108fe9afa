import torch

from birq_fairseq.modules.quantizer import RandomProjectionQuantizer


def test_deterministic_given_seed_and_different_across_seeds():
    a = RandomProjectionQuantizer(320, 16, 512, num_codebooks=2, seed=7)
    b = RandomProjectionQuantizer(320, 16, 512, num_codebooks=2, seed=7)
    c = RandomProjectionQuantizer(320, 16, 512, num_codebooks=2, seed=8)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.projection, c.projection)
    x = torch.randn(5, 11, 320)
    assert torch.equal(a(x), b(x))


def test_labels_in_range_and_nearest_codeword():
    q = RandomProjectionQuantizer(40, 8, 100, num_codebooks=3, seed=0)
    x = torch.randn(6, 9, 40)
    labels = q(x)
    assert labels.shape == (6, 9, 3) and labels.dtype == torch.long
    assert labels.min() >= 0 and labels.max() < 100
    # Brute force: nearest normalised codeword to the normalised projection.
    proj = torch.nn.functional.normalize(torch.einsum("btd,ndk->btnk", x, q.projection), dim=-1)
    dist = ((proj[..., None, :] - q.codebook[None, None]) ** 2).sum(-1)  # (B, T, N, V)
    assert torch.equal(labels, dist.argmin(-1))
    # Many inputs use many codes (not a degenerate codebook).
    assert q(torch.randn(4000, 40)).unique().numel() > 50


def test_buffers_saved_not_trained():
    q = RandomProjectionQuantizer(20, 4, 16, seed=0)
    head = torch.nn.Linear(20, 16)
    state = q.state_dict()
    assert set(state) == {"projection", "codebook"}
    assert list(q.parameters()) == []
    before = {k: v.clone() for k, v in state.items()}
    opt = torch.optim.Adam(list(head.parameters()) + list(q.parameters()), lr=1.0)
    x = torch.randn(32, 20)
    loss = torch.nn.functional.cross_entropy(head(x), q(x)[:, 0])
    loss.backward()
    opt.step()
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k])


def test_rejects_nonpositive_sizes():
    import pytest

    for kwargs in (dict(codebook_size=0), dict(codebook_dim=-1), dict(num_codebooks=0)):
        args = dict(input_dim=10, codebook_dim=4, codebook_size=8, num_codebooks=1)
        args.update(kwargs)
        with pytest.raises(ValueError, match=list(kwargs)[0]):
            RandomProjectionQuantizer(**args)
