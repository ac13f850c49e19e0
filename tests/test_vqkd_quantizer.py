"""The VQ-KD quantiser: k-means start, the EMA rule, dead-code restarts, usage, straight-through."""

import pytest
import torch
import torch.nn.functional as F

from arvision_plugins.vqkd_quantizer import VectorQuantizer, perplexity, spherical_kmeans


def unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def batch(*rows) -> torch.Tensor:
    """Vectors as a (1, N, D) batch."""
    return torch.tensor(rows, dtype=torch.float32)[None]


def quantizer(codebook: torch.Tensor | None = None, **options) -> VectorQuantizer:
    num, dim = codebook.shape if codebook is not None else (4, 3)
    q = VectorQuantizer(num, dim, **{"kmeans_init": codebook is None, **options}).train()
    if codebook is not None:
        q.codebook.copy_(codebook)
    return q


#: Four well separated unit centres in 3-D.
CENTRES = unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1])


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_start_gives_distinct_codes_at_the_clusters(seed):
    # Every centre 50 times, exactly: a random draw of 4 of the 200 vectors picks one centre twice
    # 9 times in 10, and two equal codes never separate.
    samples = CENTRES.repeat_interleave(50, dim=0)
    samples = samples[torch.randperm(200, generator=torch.Generator().manual_seed(seed))]
    q = quantizer(seed=seed)
    assert not q.initted
    q(samples[None])
    assert q.initted
    codes = q.codebook
    cosines = codes @ codes.T
    assert (cosines - torch.eye(4)).max() < 0.99, "two codes are the same"
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(4))
    # each centre is one code (k-means converged onto the clusters)
    assert torch.allclose((CENTRES @ codes.T).max(dim=1).values, torch.ones(4), atol=1e-5)


def test_kmeans_runs_lloyd_iterations():
    gen = torch.Generator().manual_seed(0)
    noisy = F.normalize(CENTRES.repeat_interleave(30, 0) + 0.1 * torch.randn(120, 3, generator=gen),
                        dim=-1)
    start = spherical_kmeans(noisy, 4, 0, torch.Generator().manual_seed(1))  # samples only
    done = spherical_kmeans(noisy, 4, 10, torch.Generator().manual_seed(1))
    assert any(torch.equal(start[i], row) for i in range(4) for row in noisy)
    means = torch.stack([noisy[(noisy @ done.T).argmax(1) == k].mean(0) for k in range(4)])
    torch.testing.assert_close(done, F.normalize(means, dim=-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("decay", [0.99, 0.5, 1.0])
def test_ema_update_follows_the_rule(decay):
    old = torch.cat([torch.eye(4)[:2], unit([0.3, -0.7, 0.2, 0.9], [-0.1, -0.4, 0.8, -0.3])])
    q = quantizer(old, decay=decay)
    z = batch([1, 0.2, 0, 0], [1, 0, 0.3, 0], [0, 1, 0, 0.1])  # codes 0, 0, 1
    out = q(z)
    assert out.ids.tolist() == [[0, 0, 1]]
    unit_z = F.normalize(z[0], dim=-1)
    expected = old.clone()
    for code, members in ((0, unit_z[:2]), (1, unit_z[2:])):
        mean = F.normalize(members.mean(0), dim=-1)
        expected[code] = F.normalize(decay * old[code] + (1 - decay) * mean, dim=-1)
    torch.testing.assert_close(q.codebook, expected, atol=1e-6, rtol=0)
    moved = (q.codebook - old).norm(dim=-1)
    if decay == 1.0:
        assert moved.max() < 1e-6  # decay 1: the codes stay where they are
    else:
        assert moved[0] > 1e-4 and moved[1] > 1e-4
    assert torch.equal(q.codebook[2:], old[2:])  # unused codes keep their value
    # the batch is quantised with the codes before the update
    torch.testing.assert_close(out.codes[0], old[[0, 0, 1]], atol=1e-6, rtol=0)
    torch.testing.assert_close(q.cluster_size, (1 - decay) * torch.tensor([2.0, 1, 0, 0]))


def test_commitment_loss_and_straight_through_gradient():
    q = quantizer(torch.eye(4), beta=0.5)
    z = batch([1, 0.2, 0, 0], [0.1, 1, 0.3, 0]).requires_grad_()
    weights = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(0))
    out = q(z)
    (out.codes * weights).sum().backward()
    codes_grad = z.grad.clone()
    z.grad = None
    (F.normalize(z, dim=-1) * weights).sum().backward()
    torch.testing.assert_close(codes_grad, z.grad)  # the codes pass the gradient to z unchanged
    unit_z = F.normalize(z.detach(), dim=-1)
    torch.testing.assert_close(out.loss, 0.5 * F.mse_loss(torch.eye(4)[[0, 1]][None], unit_z))


def test_dead_code_is_restarted_on_a_batch_vector():
    codes = unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0])  # code 2: never the nearest
    data = batch([1, 0.1, 0.2, 0], [0.2, 1, 0.1, 0.3], [1, 0.5, 0.3, 0])
    q = quantizer(codes, dead_after=2)
    assert q(data).stats["codebook/restarted"] == 0  # 1 batch idle: not yet
    assert torch.equal(q.codebook[2], codes[2])
    assert q(data).stats["codebook/restarted"] == 1
    restarted = q.codebook[2]
    assert torch.isclose((F.normalize(data[0], dim=-1) @ restarted).max(), torch.tensor(1.0))
    assert int(q.started[2]) == 2
    never = quantizer(codes, dead_after=None)
    for _ in range(5):
        never(data)
    assert torch.equal(never.codebook[2], codes[2])


def test_usage_counts_the_codes_of_the_last_batches():
    q = quantizer(torch.eye(4), usage_window=2)
    both = batch([1, 0, 0, 0], [0, 1, 0, 0])
    first = batch([1, 0.1, 0, 0])
    assert q(both).stats["codebook/used"] == 2
    assert q(first).stats["codebook/used"] == 2  # code 1: used 1 batch ago
    assert q(first).stats["codebook/used"] == 1  # code 1: 2 batches ago, out of the window
    assert perplexity(torch.tensor([5.0, 5, 0, 0])) == pytest.approx(2.0)
    assert perplexity(torch.tensor([7.0, 0, 0, 0])) == pytest.approx(1.0)


def test_eval_mode_leaves_the_codebook_alone():
    q = quantizer(torch.eye(4)).eval()
    q(batch([1, 0.2, 0, 0]))
    assert torch.equal(q.codebook, torch.eye(4)) and int(q.batches) == 0
    fresh = quantizer().eval()
    fresh(batch([1, 0.2, 0]))
    assert not fresh.initted  # k-means waits for a training batch
