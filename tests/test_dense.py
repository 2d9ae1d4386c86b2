"""vmil.dense: large fp32 CPU dense layers through oneDNN, equal to F.linear up to rounding."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vmil import dense
from vmil.dense import Dense, GRUCell, linear, routes_to_onednn, using_dense_backend

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


@pytest.fixture(autouse=True)
def two_threads():
    # Routing needs more than one thread; other test modules set one.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), [t.grad for t in tensors]


def test_large_products_route_to_onednn_and_match_f_linear(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 100, 64, generator=gen), torch.randn(48, 64, generator=gen), torch.randn(48, generator=gen)
    assert routes_to_onednn(x, w)
    calls = []
    original = dense._OneDnnLinear.apply
    monkeypatch.setattr(dense._OneDnnLinear, "apply", lambda *a: calls.append(1) or original(*a))
    out, grads = _grads(linear, x, w, b)
    ref, ref_grads = _grads(F.linear, x, w, b)
    assert calls, "a 300-row product should have gone through oneDNN"
    assert out.shape == (3, 100, 48)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-3)


def test_small_products_and_the_blas_backend_keep_f_linear_bit_for_bit():
    w, b = torch.randn(48, 64), torch.randn(48)
    small = torch.randn(16, 64)
    assert not routes_to_onednn(small, w)
    assert torch.equal(linear(small, w, b), F.linear(small, w, b))
    narrow = torch.randn(512, 64)
    assert not routes_to_onednn(narrow, torch.randn(1, 64)), "a 1-unit output is faster on the BLAS"
    with using_dense_backend("blas"):
        assert not routes_to_onednn(narrow, w)
        assert torch.equal(linear(narrow, w, b), F.linear(narrow, w, b))
    assert dense.dense_backend() == "onednn"
    assert routes_to_onednn(narrow, w)
    torch.set_num_threads(1)
    assert not routes_to_onednn(narrow, w), "one thread: torch runs the 1x1 conv on its BLAS path anyway"
    with pytest.raises(ValueError, match="one of \\('auto', 'onednn', 'blas'\\)"):
        dense.set_dense_backend("mkl")


def test_auto_backend_is_the_blas_on_intel_and_onednn_elsewhere(monkeypatch):
    assert dense.machine_dense_backend("GenuineIntel") == "blas"
    assert dense.machine_dense_backend("AuthenticAMD") == "onednn"
    assert dense.machine_dense_backend("") == "onednn", "unknown vendors keep the routing"
    for vendor, backend in (("GenuineIntel", "blas"), ("AuthenticAMD", "onednn")):
        monkeypatch.setattr(dense, "cpu_vendor", lambda vendor=vendor: vendor)
        with using_dense_backend("auto"):
            assert dense.dense_backend() == backend
        assert dense.dense_backend() == "onednn"


def test_function_gradients_and_second_derivatives_in_float64(monkeypatch):
    # A chunk of 2 rows makes the weight gradient sum three chunks.
    monkeypatch.setattr(dense, "GRAD_WEIGHT_CHUNK", 2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    fn = lambda x, w, b: dense._from_image(dense._OneDnnLinear.apply(x, w, b))  # noqa: E731
    torch.testing.assert_close(fn(x, w, b), F.linear(x, w, b))
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_weight_gradient_over_many_rows_sums_its_chunks():
    gen = torch.Generator().manual_seed(2)
    grad, x = torch.randn(5000, 40, generator=gen), torch.randn(5000, 64, generator=gen)
    torch.testing.assert_close(dense._grad_weight(grad, x), grad.t() @ x, rtol=1e-4, atol=1e-2)


def test_gradient_penalty_through_dense_layers_matches_nn_linear():
    torch.manual_seed(3)
    ours = nn.Sequential(Dense(64, 64), nn.ELU(), Dense(64, 1))
    ref = nn.Sequential(nn.Linear(64, 64), nn.ELU(), nn.Linear(64, 1))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(300, 64)

    def penalty(net):
        inp = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(net(inp).sum(), inp, create_graph=True)
        loss = (g.norm(dim=-1) - 1).pow(2).mean()
        loss.backward()
        return loss.detach(), [p.grad for p in net.parameters()]

    loss, grads = penalty(ours)
    ref_loss, ref_grads = penalty(ref)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_in_place_activation_after_a_routed_layer_keeps_correct_gradients():
    torch.manual_seed(4)
    ours = nn.Sequential(Dense(64, 96), nn.ReLU(inplace=True))
    ref = nn.Sequential(nn.Linear(64, 96), nn.ReLU())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(400, 64)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours[0].weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-3)


def test_gru_cell_matches_torch_large_and_small():
    torch.manual_seed(5)
    ours, ref = GRUCell(48, 40), nn.GRUCell(48, 40)
    ref.load_state_dict(ours.state_dict())
    for rows, exact in ((300, False), (8, True)):
        x, h = torch.randn(rows, 48), torch.randn(rows, 40)
        out, grads = _grads(ours, x, h)
        ref_out, ref_grads = _grads(ref, x, h)
        if exact:
            assert torch.equal(out, ref_out)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_flop_counter_sees_the_same_flops_on_either_backend():
    layer, x = Dense(64, 48), torch.randn(300, 64, requires_grad=True)

    def flops(backend):
        with using_dense_backend(backend), FlopCounterMode(display=False) as counter:
            layer(x).sum().backward()
        return counter.get_total_flops()

    assert flops("onednn") == flops("blas") == 3 * 2 * 300 * 64 * 48


def test_dense_compiles_on_cpu_with_routing_sizes():
    """torch.compile (agent.compile) traces Dense with symbolic sizes; routing's size test used to stop
    inductor there. Under the compiler the product is the compiler's own, equal to F.linear."""
    torch._dynamo.reset()
    layer = Dense(64, 48)
    assert routes_to_onednn(torch.randn(20, 15, 64), layer.weight)
    compiled = torch.compile(lambda t: layer(t).relu(), dynamic=True)
    for lead in ((20, 15), (16, 30)):  # dynamic=True: [B, T] are symbols, as in the crash
        t = torch.randn(*lead, 64)
        torch.testing.assert_close(compiled(t), F.linear(t, layer.weight, layer.bias).relu(), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
