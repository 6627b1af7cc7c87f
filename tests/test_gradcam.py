"Tests for faceanon.gradcam: Hook, Grad-CAM against closed forms and a hook-free reference, distraction properties, FaceNet shapes."
import pytest
import torch
from torch import nn
import torch.nn.functional as F
import fastcore.test as fct
from faceanon.gradcam import (Hook, cam_from, grad_cam, upsample_cam, distract, Distraction, DistractionOut,
                              facenet_parts, facenet_distraction)


def _linear_head_net(K=3, n_cls=4, seed=0):
    "conv trunk -> A -> avgpool -> linear (so d s_c / d A_kij = W_ck / HW)."
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Conv2d(2, K, 3, padding=1), nn.ReLU())
    fc = nn.Linear(K, n_cls)
    return nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc), trunk, fc


def test_hook_records_and_removes():
    net, trunk, fc = _linear_head_net()
    x = torch.randn(2, 2, 5, 5, requires_grad=True)
    with Hook(trunk) as h:
        torch.autograd.grad(net(x)[:, 1].sum(), x)
    fct.test_eq(h.activations, trunk(x).detach())
    fct.test_close(h.gradients, (fc.weight[1] / 25).detach().view(1, 3, 1, 1).expand(2, 3, 5, 5))
    fct.test_eq(len(trunk._forward_hooks), 0); fct.test_eq(len(trunk._backward_hooks), 0)
    h2 = Hook(trunk, backward=False); net(x); h2.remove()
    fct.test_eq(h2.gradients, None); fct.test_eq(h2.activations.shape, (2, 3, 5, 5))


def test_hook_detach_false_keeps_graph():
    net, trunk, _ = _linear_head_net()
    with Hook(trunk, backward=False, detach=False) as h: net(torch.randn(1, 2, 4, 4))
    assert h.activations.requires_grad


@pytest.mark.parametrize('c', [0, 1, 2, 3])
def test_grad_cam_closed_form_linear_head(c):
    net, trunk, fc = _linear_head_net()
    x = torch.randn(2, 2, 6, 6)
    cam, logits = grad_cam(net, trunk, x, cls=c)
    A = trunk(x).detach()
    ref = F.relu((fc.weight[c].detach().view(1, -1, 1, 1) / 36 * A).sum(1))
    fct.test_close(cam, ref, eps=1e-6)
    fct.test_close(logits, net(x).detach())


def test_grad_cam_matches_hook_free_reference_on_nonlinear_net():
    torch.manual_seed(1)
    a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1))
    b = nn.Sequential(nn.ReLU(), nn.Conv2d(5, 6, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    net = nn.Sequential(a, b)
    x = torch.randn(3, 3, 9, 9)
    cls = torch.tensor([2, 0, 1])
    A = a(x).detach().requires_grad_(True)
    g, = torch.autograd.grad(b(A).gather(1, cls[:, None]).sum(), A)
    ref = F.relu((g.mean((2, 3), keepdim=True) * A.detach()).sum(1))
    cam, _ = grad_cam(net, a, x, cls)
    fct.test_close(cam, ref, eps=1e-6)


def test_grad_cam_default_class_no_grad_context_and_params_untouched():
    net, trunk, _ = _linear_head_net()
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad(): cam, logits = grad_cam(net, trunk, x)
    fct.test_close(cam, grad_cam(net, trunk, x, cls=logits.argmax(1))[0])
    assert all(p.grad is None for p in net.parameters())
    fct.test_fail(lambda: grad_cam(net, nn.Conv2d(2, 2, 1), x), contains='no gradient reached')


def test_cam_from_and_upsample():
    acts = torch.tensor([[[[1., -2.]], [[3., 1.]]]])                # (1, 2, 1, 2)
    grads = torch.tensor([[[[1., 3.]], [[-1., -1.]]]])              # alpha = (2, -1)
    fct.test_close(cam_from(acts, grads), torch.tensor([[[0., 0.]]]))         # 2*1-3 = -1, 2*(-2)-1 = -5
    fct.test_close(cam_from(acts, -grads), torch.tensor([[[1., 5.]]]))
    up = upsample_cam(torch.tensor([[[1., 5.]]]), (2, 4))
    fct.test_eq(up.shape, (1, 1, 2, 4)); fct.test_close(up.max(), 1.)
    fct.test_eq(upsample_cam(torch.zeros(1, 2, 2), (3, 3)), torch.zeros(1, 1, 3, 3))   # no evidence: no NaN


def test_distract_values():
    acts = torch.ones(1, 2, 1, 2)
    grads = torch.tensor([[[[1., 1.]], [[0., 0.]]]])                # alpha = (1, 0)
    acts[0, 0, 0, 1] = 3.                                           # cam = (1, 3) -> M = (1/3, 1)
    fct.test_close(distract(acts, grads)[0, :, 0], torch.tensor([[2 / 3, 0.], [2 / 3, 0.]]))
    fct.test_close(distract(acts, grads, 0.5)[0, :, 0], torch.tensor([[5 / 6, 1.5], [5 / 6, .5]]))
    fct.test_close(distract(acts, grads, mode='channel')[0, :, 0], torch.tensor([[0., 0.], [1., 1.]]))
    fct.test_eq(distract(acts, torch.zeros_like(grads)), acts)      # no evidence: unchanged
    fct.test_fail(lambda: distract(acts, grads, mode='both'), contains="mode must be")


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('mode', ['spatial', 'channel'])
def test_distraction_never_raises_score_with_linear_head(seed, mode):
    net, trunk, fc = _linear_head_net(seed=seed)
    head = nn.Sequential(net[1], net[2])
    x = torch.randn(4, 2, 6, 6)
    o = Distraction(net, trunk, head, 1.0, mode)(x)
    assert isinstance(o, DistractionOut)
    with torch.no_grad():
        s, s_hat = fc(o.f).gather(1, o.cls[:, None]), fc(o.f_hat).gather(1, o.cls[:, None])
    assert (s_hat <= s + 1e-5).all()
    if mode == 'spatial':     # exact drop: sum relu(cam)^2 / max(cam)
        drop = (o.cam ** 2).flatten(1).sum(1) / o.cam.flatten(1).amax(1).clamp_min(1e-12)
        fct.test_close((s - s_hat)[:, 0], drop, eps=1e-4)


def test_distraction_strength_zero_is_identity():
    net, trunk, _ = _linear_head_net()
    o = Distraction(net, trunk, nn.Sequential(net[1], net[2]), strength=0.)(torch.randn(2, 2, 4, 4), cls=1)
    fct.test_eq(o.acts_hat, o.acts); fct.test_close(o.f_hat, o.f); fct.test_eq(o.cls, torch.tensor([1, 1]))


def test_facenet_hook_shapes_at_160px():
    from facenet_pytorch import InceptionResnetV1
    torch.manual_seed(0)
    fn = InceptionResnetV1(classify=True, num_classes=5).eval()
    x = torch.randn(2, 3, 160, 160)
    layer, head = facenet_parts(fn)
    with Hook(layer) as h:
        xi = x.clone().requires_grad_(True)
        logits = fn(xi); torch.autograd.grad(logits[:, 0].sum(), xi)
    fct.test_eq(h.activations.shape, (2, 1792, 3, 3)); fct.test_eq(h.gradients.shape, (2, 1792, 3, 3))
    with torch.no_grad(): fct.test_close(fn.logits(head(h.activations)), logits.detach(), eps=1e-4)
    o = facenet_distraction(fn)(x)
    fct.test_eq(o.acts_hat.shape, (2, 1792, 3, 3)); fct.test_eq(o.f_hat.shape, (2, 512)); fct.test_eq(o.logits.shape, (2, 5))
    with torch.no_grad():
        assert (fn.logits(o.f_hat).gather(1, o.cls[:, None]) <= fn.logits(o.f).gather(1, o.cls[:, None]) + 1e-4).all()
    fct.test_fail(lambda: facenet_distraction(InceptionResnetV1()), contains='classify=True')


def test_facenet_distraction_at_an_earlier_stage():
    from facenet_pytorch import InceptionResnetV1
    torch.manual_seed(0)
    fn = InceptionResnetV1(classify=True, num_classes=5).eval()
    x = torch.randn(2, 3, 160, 160)
    A, head = facenet_parts(fn, 'repeat_2')
    with torch.no_grad(), Hook(A, backward=False) as h: logits = fn(x)
    fct.test_eq(h.activations.shape, (2, 896, 8, 8))                         # 17 x 17 -> mixed_6a -> 8 x 8 at 160 px
    with torch.no_grad(): fct.test_close(fn.logits(head(h.activations)), logits, eps=1e-4)
    o = facenet_distraction(fn, strength=0., layer='repeat_2', scores=fn)(x)
    fct.test_close(o.f_hat, o.f); fct.test_eq(o.cam.shape, (2, 8, 8))
    fct.test_fail(lambda: facenet_parts(fn, 'block9'), contains='layer must be one of')


def test_heat_inside_shares():
    from faceanon.gradcam import heat_inside
    cam = torch.zeros(4, 3, 3); cam[0] = 1; cam[1, 1, 1] = 5; cam[3, 0, 0] = 1
    mask = torch.zeros(4, 30, 30); mask[:, 10:20, 10:20] = 1          # the centre cell, at 10x the size
    s = heat_inside(cam, mask[:, None])                                 # (B, 1, H, W) masks work too
    fct.test_close(s[0], 100 / 900, eps=1e-5)                           # uniform heat: the area share
    assert s[1] > 0.5 and s[3] < s[1]                                   # heat on the centre / in a corner
    assert s[2].isnan()                                                 # no heat: no share
    fct.test_eq(heat_inside(cam, mask).shape, (4,))
