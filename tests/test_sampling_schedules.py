"""Noise schedules, schedulers, prediction types and seeded noise (engine/sampling).

Reference values marked "ComfyUI" were computed with ComfyUI 0.3.75's own code
(comfy/model_sampling.py, comfy/samplers.py, comfy/k_diffusion/sampling.py) on the CPU;
the Beta-distribution values with mpmath at 40 digits.
"""

import math

import numpy as np
import pytest
import torch

from engine.sampling import denoiser as dn
from engine.sampling import noise, schedulers
from engine.sampling.schedules import DiscreteSchedule, FlowSchedule, make_betas

SD = DiscreteSchedule()
FLOW3 = FlowSchedule(shift=3.0)

# ComfyUI's sigmas for 7 steps of each scheduler (SD1/SDXL schedule, and a flow model with shift 3).
COMFY_SD_7_STEPS = {
    "simple": [14.614641189575195, 6.701629638671875, 3.528203248977661, 2.0616707801818848, 1.2762351036071777, 0.7900609374046326, 0.43806174397468567, 0.0],
    "sgm_uniform": [14.614640235900879, 6.677999496459961, 3.5220563411712646, 2.0606415271759033, 1.276832103729248, 0.7912598252296448, 0.4396657347679138, 0.0],
    "karras": [14.614643096923828, 7.0944108963012695, 3.168604850769043, 1.2741007804870605, 0.4469185769557953, 0.13030768930912018, 0.0291671771556139, 0.0],
    "exponential": [14.614640235900879, 5.185680389404297, 1.8400236368179321, 0.6528918147087097, 0.23166418075561523, 0.08220089972019196, 0.029167160391807556, 0.0],
    "ddim_uniform": [14.265109062194824, 6.57064962387085, 3.485454797744751, 2.047311782836914, 1.27206289768219, 0.7900609374046326, 0.4403090178966522, 0.04131441190838814, 0.0],
    "beta": [14.614641189575195, 9.70147705078125, 4.712596893310547, 2.2683229446411133, 1.1682159900665283, 0.6126959919929504, 0.27718043327331543, 0.0],
    "normal": [14.614640235900879, 5.948899269104004, 2.918307065963745, 1.6155803203582764, 0.9323579668998718, 0.49355170130729675, 0.029167160391807556, 0.0],
    "linear_quadratic": [14.614641189575195, 14.492852210998535, 14.371064186096191, 14.249275207519531, 13.267354011535645, 10.565167427062988, 6.142716407775879, 0.0],
    "kl_optimal": [14.614632606506348, 3.0807013511657715, 1.5970659255981445, 0.9615880846977234, 0.572914183139801, 0.2818378806114197, 0.029167158529162407, 0.0],
}
COMFY_FLOW3_7_STEPS = {
    "simple": [1.0, 0.9477171301841736, 0.8827161192893982, 0.8003731369972229, 0.6926802396774292, 0.5458015203475952, 0.3335925340652466, 0.0],
    "sgm_uniform": [1.0, 0.9475424885749817, 0.882787823677063, 0.8008373379707336, 0.6937930583953857, 0.5480456352233887, 0.3379721939563751, 0.0],
    "karras": [1.0, 0.5010548233985901, 0.23273682594299316, 0.09836144745349884, 0.03683168813586235, 0.011744296178221703, 0.002994012786075473, 0.0],
    "exponential": [1.0, 0.37964317202568054, 0.1441289335489273, 0.05471756309270859, 0.02077315002679825, 0.00788638461381197, 0.002994011854752898, 0.0],
    "ddim_uniform": [0.998663067817688, 0.9460856318473816, 0.881188154220581, 0.7990654706954956, 0.6918103694915771, 0.5458015203475952, 0.335403710603714, 0.005976095795631409, 0.0],
    "beta": [1.0, 0.9751574993133545, 0.9154325723648071, 0.8175613880157471, 0.6685144305229187, 0.4554317593574524, 0.18881116807460785, 0.0],
    "normal": [1.0, 0.9377105236053467, 0.8576923608779907, 0.7511211037635803, 0.602150559425354, 0.37919461727142334, 0.008928571827709675, 0.0],
    "linear_quadratic": [1.0, 0.9916666746139526, 0.9833333492279053, 0.9750000238418579, 0.9078124761581421, 0.7229166626930237, 0.4203124940395355, 0.0],
    "kl_optimal": [1.0, 0.7681201100349426, 0.5786816477775574, 0.41596850752830505, 0.27008962631225586, 0.1341916024684906, 0.002994012087583542, 0.0],
}

# (p, a, b, x) with I_x(a, b) = p, by mpmath
BETA_QUANTILES = [
    (0.1, 0.6, 0.6, 0.039584405588780852),
    (0.25, 0.6, 0.6, 0.17568037865269501),
    (0.9, 0.6, 0.6, 0.96041559441121917),
    (0.999, 0.6, 0.6, 0.99998144126148255),
    (0.001, 0.6, 0.6, 1.8558738517451997e-5),
    (0.3, 2.0, 5.0, 0.18180347131894916),
    (0.7, 0.3, 3.0, 0.09172447526246012),
    (0.5, 5.0, 0.7, 0.91951268640893154),
    (0.05, 10.0, 10.0, 0.32008652958872419),
]
# (x, a, b, I_x(a, b)), by mpmath
BETA_CDF = [
    (0.2, 0.6, 0.6, 0.27136793282658242),
    (0.7, 2.0, 5.0, 0.98906499999999999),
    (0.01, 0.3, 3.0, 0.37379871805148208),
    (0.95, 5.0, 0.7, 0.62360125516312068),
]


# --- schedules ----------------------------------------------------------------------------------

def test_sd_sigma_table_matches_the_ddpm_formula():
    """sigma_t = sqrt((1 - alphā_t) / alphā_t) with betas linear in sqrt from 0.00085 to 0.012, derived here in numpy."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_bar = np.cumprod(1 - betas)
    expected = np.sqrt((1 - alphas_bar) / alphas_bar).astype(np.float32)
    np.testing.assert_allclose(SD.sigmas.numpy(), expected, rtol=1e-7)
    assert SD.sigmas.dtype == torch.float32
    assert float(SD.sigma_min) == 0.029167158529162407  # ComfyUI
    assert float(SD.sigma_max) == 14.614641189575195  # ComfyUI


def test_zero_terminal_snr_rescale():
    zsnr = DiscreteSchedule(zsnr=True)
    assert float(zsnr.sigma_min) == float(SD.sigma_min)  # the first step keeps its value
    a = 4.8973451890853435e-08
    assert float(zsnr.sigma_max) == pytest.approx(math.sqrt((1 - a) / a), rel=1e-6)
    assert float(zsnr.sigma_max) == 4518.763671875  # ComfyUI
    assert torch.all(zsnr.sigmas[1:] > zsnr.sigmas[:-1])


def test_cosine_and_linear_betas():
    cosine = make_betas("cosine")
    assert cosine.max() == pytest.approx(0.999) and cosine.min() >= 0
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    alphas_bar = torch.cumprod(1 - cosine, 0)
    assert float(alphas_bar[499]) == pytest.approx(f(500) / f(0), rel=1e-10)
    plain = make_betas("sqrt_linear", linear_start=1e-4, linear_end=0.02)
    assert float(plain[0]) == pytest.approx(1e-4) and float(plain[-1]) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        make_betas("quadratic")


def test_discrete_timestep_and_sigma_are_inverse():
    t = torch.arange(0, 1000, 37).float()
    assert torch.equal(SD.timestep(SD.sigma(t)), t.long())
    # half-way between two entries, log-sigma is interpolated: the geometric mean
    mid = float(SD.sigma(torch.tensor(10.5)))
    assert mid == pytest.approx(math.sqrt(float(SD.sigmas[10]) * float(SD.sigmas[11])), rel=1e-6)
    assert float(SD.sigma(torch.tensor(-5.0))) == float(SD.sigma(torch.tensor(0.0)))  # clamped
    assert float(SD.sigma(torch.tensor(0.0))) == pytest.approx(float(SD.sigma_min), rel=1e-6)


def test_percent_to_sigma():
    assert SD.percent_to_sigma(0.0) == 999999999.9
    assert SD.percent_to_sigma(1.0) == 0.0
    assert SD.percent_to_sigma(0.5) == float(SD.sigma(torch.tensor(499.5)))
    assert [SD.percent_to_sigma(p) for p in (0.25, 0.5, 0.9)] == [4.086081027984619, 1.6155803203582764, 0.34370481967926025]  # ComfyUI
    assert FLOW3.percent_to_sigma(0.0) == 1.0 and FLOW3.percent_to_sigma(1.0) == 0.0
    assert FLOW3.percent_to_sigma(0.5) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))


def test_flow_schedule():
    assert float(FLOW3.sigma_max) == 1.0
    assert float(FLOW3.sigma_min) == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), rel=1e-6)
    sigma = torch.tensor([0.25, 0.8])
    assert torch.allclose(FLOW3.timestep(sigma), sigma * 1000)
    assert torch.allclose(FlowSchedule(shift=1.0).sigma(torch.tensor([250.0])), torch.tensor([0.25]))


# --- schedulers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(schedulers.SCHEDULERS))
def test_schedulers_equal_comfyui(name):
    """Same sigmas as ComfyUI, to fp32 rounding: torch's vectorised exp can differ by an ulp from one CPU to
    another, so the same code gives ComfyUI's recorded values bit for bit on some machines only."""
    for schedule, expected in ((SD, COMFY_SD_7_STEPS[name]), (FLOW3, COMFY_FLOW3_7_STEPS[name])):
        assert schedulers.calculate_sigmas(schedule, name, 7).tolist() == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize("name", list(schedulers.SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 50])
def test_schedulers_decrease_to_zero(name, steps):
    for schedule in (SD, FLOW3):
        sigmas = schedulers.calculate_sigmas(schedule, name, steps)
        assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
        assert torch.all(sigmas[1:] < sigmas[:-1])
        if name == "ddim_uniform":  # the stride n_table // steps may leave one more entry
            assert len(sigmas) in (steps + 1, steps + 2)
        elif name == "beta":  # repeated rounded indices are kept once
            assert len(sigmas) <= steps + 1
        else:
            assert len(sigmas) == steps + 1


def test_simple_ddim_uniform_normal_by_hand():
    """ComfyUI's rules, evaluated by hand for 10 / 10 / 5 steps of the SD table."""
    s = SD.sigmas
    assert schedulers.simple_scheduler(SD, 10).tolist() == [float(s[999 - 100 * i]) for i in range(10)] + [0.0]
    assert schedulers.ddim_uniform_scheduler(SD, 10).tolist() == [float(s[i]) for i in range(901, 0, -100)] + [0.0]
    timesteps = [999.0, 749.25, 499.5, 249.75, 0.0]
    assert schedulers.normal_scheduler(SD, 5).tolist() == [float(SD.sigma(torch.tensor(t))) for t in timesteps] + [0.0]
    assert schedulers.sgm_uniform_scheduler(SD, 4).tolist() == [float(SD.sigma(torch.tensor(t))) for t in timesteps[:4]] + [0.0]


def test_karras_exponential_kl_optimal_shape():
    smin, smax = 0.03, 14.6
    karras = schedulers.karras_sigmas(10, smin, smax).double()
    assert karras[0].item() == pytest.approx(smax, rel=1e-6) and karras[-2].item() == pytest.approx(smin, rel=1e-6)
    assert karras[-1] == 0
    ramp = karras[:-1] ** (1 / 7)
    assert torch.allclose(ramp[1:] - ramp[:-1], (ramp[1] - ramp[0]).expand(9), rtol=1e-4)
    expo = schedulers.exponential_sigmas(10, smin, smax).double()
    assert expo[0].item() == pytest.approx(smax, rel=1e-6) and expo[-2].item() == pytest.approx(smin, rel=1e-6)
    logs = expo[:-1].log()
    assert torch.allclose(logs[1:] - logs[:-1], (logs[1] - logs[0]).expand(9), rtol=1e-4)
    kl = schedulers.kl_optimal_sigmas(10, smin, smax).double()
    assert kl[0].item() == pytest.approx(smax, rel=1e-5) and kl[-2].item() == pytest.approx(smin, rel=1e-5)
    atans = kl[:-1].atan()
    assert torch.allclose(atans[1:] - atans[:-1], (atans[1] - atans[0]).expand(9), rtol=1e-4)
    assert schedulers.kl_optimal_sigmas(1, smin, smax).tolist() == pytest.approx([smax, 0.0])


def test_linear_quadratic_by_hand():
    """4 steps: linear part [0, 0.0125], quadratic 0.2375 i² - 0.9375 i + 0.95 at i = 2, 3, then 1."""
    expected = [1.0, 0.9875, 0.975, 0.725, 0.0]
    got = schedulers.linear_quadratic_scheduler(SD, 4) / SD.sigma_max
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert schedulers.linear_quadratic_scheduler(SD, 1).tolist() == [float(SD.sigma_max), 0.0]


def test_beta_scheduler_uses_rounded_quantile_indices():
    sigmas = schedulers.beta_scheduler(SD, 4)
    # quantiles of 1, 0.75, 0.5, 0.25 under Beta(0.6, 0.6), times 999, rounded half to even
    indices = [999, round(schedulers.beta_ppf(0.75, 0.6, 0.6) * 999), 500, round(schedulers.beta_ppf(0.25, 0.6, 0.6) * 999)]
    assert indices[3] == round(0.17568037865269501 * 999)
    assert sigmas.tolist() == [float(SD.sigmas[i]) for i in indices] + [0.0]


def test_unknown_scheduler():
    with pytest.raises(ValueError, match="unknown scheduler"):
        schedulers.calculate_sigmas(SD, "nope", 5)


# --- KSampler rules -----------------------------------------------------------------------------

def test_discard_penultimate_sigma():
    full = schedulers.calculate_sigmas(SD, "karras", 11)
    for sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        sigmas = schedulers.ksampler_sigmas(SD, "karras", 10, sampler)
        assert len(sigmas) == 11 and torch.equal(sigmas, torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(schedulers.ksampler_sigmas(SD, "karras", 10, "euler"), schedulers.calculate_sigmas(SD, "karras", 10))


def test_denoise_below_one_keeps_the_tail_of_a_longer_schedule():
    sigmas = schedulers.ksampler_sigmas(SD, "normal", 20, "euler", denoise=0.5)
    assert torch.equal(sigmas, schedulers.calculate_sigmas(SD, "normal", 40)[-21:])
    sigmas = schedulers.ksampler_sigmas(SD, "normal", 10, "euler", denoise=0.3)
    assert torch.equal(sigmas, schedulers.calculate_sigmas(SD, "normal", 33)[-11:])  # int(10 / 0.3) = 33
    sigmas = schedulers.ksampler_sigmas(SD, "karras", 10, "dpm_2", denoise=0.5)
    full = schedulers.calculate_sigmas(SD, "karras", 21)
    assert torch.equal(sigmas, torch.cat([full[:-2], full[-1:]])[-11:])
    assert len(schedulers.ksampler_sigmas(SD, "normal", 10, "euler", denoise=0.0)) == 0
    assert torch.equal(schedulers.ksampler_sigmas(SD, "normal", 10, "euler", denoise=0.99995),
                       schedulers.calculate_sigmas(SD, "normal", 10))


def test_step_range():
    sigmas = schedulers.calculate_sigmas(SD, "karras", 10)
    original = sigmas.clone()
    assert torch.equal(schedulers.step_range(sigmas, 3), sigmas[3:])
    leftover = schedulers.step_range(sigmas, 0, 6, force_full_denoise=False)
    assert torch.equal(leftover, sigmas[:7]) and leftover[-1] > 0
    full = schedulers.step_range(sigmas, 2, 6, force_full_denoise=True)
    assert torch.equal(full[:-1], sigmas[2:6]) and full[-1] == 0
    assert torch.equal(schedulers.step_range(sigmas, 0, 10000, force_full_denoise=True), sigmas)
    assert len(schedulers.step_range(sigmas, 10)) == 0 and len(schedulers.step_range(sigmas, 99)) == 0
    assert torch.equal(sigmas, original)


# --- the Beta distribution ----------------------------------------------------------------------

@pytest.mark.parametrize("p,a,b,x", BETA_QUANTILES)
def test_beta_ppf(p, a, b, x):
    assert schedulers.beta_ppf(p, a, b) == pytest.approx(x, rel=1e-12, abs=1e-15)
    assert schedulers.betainc(schedulers.beta_ppf(p, a, b), a, b) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("x,a,b,p", BETA_CDF)
def test_betainc(x, a, b, p):
    assert schedulers.betainc(x, a, b) == pytest.approx(p, rel=1e-12)
    assert schedulers.betainc(x, a, b) == pytest.approx(1 - schedulers.betainc(1 - x, b, a), rel=1e-12)


def test_beta_ppf_closed_forms():
    assert schedulers.beta_ppf(0.5, 0.6, 0.6) == 0.5
    assert schedulers.beta_ppf(0.37, 1.0, 1.0) == 0.37
    assert schedulers.beta_ppf(0.3, 2.5, 1.0) == pytest.approx(0.3 ** (1 / 2.5), rel=1e-15)
    assert schedulers.beta_ppf(0.0, 0.6, 0.6) == 0.0 and schedulers.beta_ppf(1.0, 0.6, 0.6) == 1.0


# --- prediction types and the denoiser ----------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.03, 1.0, 14.6])
def test_prediction_types_recover_x0(sigma):
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    s = torch.full((2,), sigma)
    x = x0 + sigma * eps
    assert torch.allclose(dn.PREDICTIONS["eps"].calculate_denoised(s, eps, x), x0, atol=1e-5)
    # v = alpha eps - sigma_t x0 on the VP state x / sqrt(1 + sigma²)
    alpha, sigma_t = 1 / math.sqrt(1 + sigma ** 2), sigma / math.sqrt(1 + sigma ** 2)
    v = alpha * eps - sigma_t * x0
    assert torch.allclose(dn.PREDICTIONS["v"].calculate_denoised(s, v, x), x0, atol=1e-5)
    assert torch.equal(dn.PREDICTIONS["x0"].calculate_denoised(s, x0, x), x0)
    assert torch.allclose(dn.PREDICTIONS["eps"].calculate_input(s, x), x * alpha, rtol=1e-6)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 0.97])
def test_flow_prediction_recovers_x0_and_scaling_inverts(sigma):
    torch.manual_seed(1)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    s = torch.full((2,), sigma)
    flow = dn.PREDICTIONS["flow"]
    x = flow.noise_scaling(s, eps, x0)
    assert torch.allclose(x, (1 - sigma) * x0 + sigma * eps, atol=1e-6)
    assert torch.allclose(flow.calculate_denoised(s, eps - x0, x), x0, atol=1e-5)
    assert torch.equal(flow.calculate_input(s, x), x)
    assert torch.allclose(flow.inverse_noise_scaling(s, flow.noise_scaling(s, torch.zeros_like(x0), x0)), x0, atol=1e-6)


def test_eps_noise_scaling():
    torch.manual_seed(2)
    latent, n = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    eps = dn.PREDICTIONS["eps"]
    sigma = torch.tensor(14.6)
    assert torch.allclose(eps.noise_scaling(sigma, n, latent), latent + 14.6 * n)
    assert torch.allclose(eps.noise_scaling(sigma, n, latent, max_denoise=True), latent + math.sqrt(1 + 14.6 ** 2) * n)
    assert torch.equal(eps.inverse_noise_scaling(sigma, latent), latent)
    assert dn.is_max_denoise(SD, schedulers.calculate_sigmas(SD, "karras", 5))
    assert not dn.is_max_denoise(SD, schedulers.ksampler_sigmas(SD, "karras", 5, denoise=0.5))


def test_denoiser_feeds_the_net_its_input_and_timestep():
    calls = []

    def net(x_in, t, context=None):
        calls.append((x_in, t, context))
        return torch.ones_like(x_in)

    model = dn.Denoiser(net, dn.PREDICTIONS["eps"], SD)
    x = torch.full((2, 4, 2, 2), 3.0)
    sigma = torch.tensor([float(SD.sigmas[999]), float(SD.sigmas[500])])
    out = model(x, sigma, seed=5, context="c")
    x_in, t, context = calls[0]
    assert context == "c" and t.dtype == torch.float32 and t.tolist() == [999.0, 500.0]
    assert torch.allclose(x_in[1], x[1] / math.sqrt(float(sigma[1]) ** 2 + 1))
    assert torch.allclose(out[0], x[0] - float(sigma[0]))
    assert dn.model_sampling_of(model) is model and not dn.is_flow(model)
    assert dn.is_flow(dn.Denoiser(net, dn.PREDICTIONS["flow"], FLOW3))


# --- seeded noise -------------------------------------------------------------------------------

def test_prepare_noise_equals_the_global_generator_stream():
    latent = torch.zeros(2, 4, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(123456789)
        expected = torch.randn(latent.shape)
    assert torch.equal(noise.prepare_noise(latent, 123456789), expected)
    assert torch.equal(noise.prepare_noise(latent, 2 ** 64 - 1), noise.prepare_noise(latent, 2 ** 64 - 1))
    half = noise.prepare_noise(latent.half(), 7)
    assert half.dtype == torch.float16 and torch.equal(half, noise.prepare_noise(latent, 7).half())


def test_prepare_noise_with_batch_index():
    latent = torch.zeros(3, 4, 8, 8)
    generator = torch.Generator().manual_seed(42)
    slices = [torch.randn((1, 4, 8, 8), generator=generator) for _ in range(3)]
    got = noise.prepare_noise(latent, 42, batch_index=[2, 0, 2])
    assert torch.equal(got, torch.cat([slices[2], slices[0], slices[2]]))


def test_default_noise_sampler_offsets_the_seed_on_cpu():
    x = torch.zeros(1, 4, 4, 4)
    sample = noise.default_noise_sampler(x, seed=10)
    generator = torch.Generator().manual_seed(11)
    first, second = torch.randn(x.shape, generator=generator), torch.randn(x.shape, generator=generator)
    assert torch.equal(sample(1.0, 0.5), first) and torch.equal(sample(0.5, 0.1), second)


def test_inpaint_noise_is_a_fresh_seed_plus_one_draw():
    n = torch.zeros(1, 4, 4, 4)
    assert torch.equal(noise.inpaint_noise(n, 5), torch.randn(n.shape, generator=torch.Generator().manual_seed(6)))


def test_brownian_noise_is_a_reproducible_brownian_motion():
    x = torch.zeros(20000)
    points = [14.6, 7.0, 2.5, 2.4, 0.5, 0.03]
    forward = noise.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=3)
    again = noise.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=3)
    inc = [forward(a, b) for a, b in zip(points, points[1:])]
    inc_backward = [again(a, b) for a, b in reversed(list(zip(points, points[1:])))][::-1]
    for a, b in zip(inc, inc_backward):
        assert torch.allclose(a, b, atol=1e-5)  # any query order sees the same path
    assert not torch.allclose(noise.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=4)(7.0, 2.5), inc[1])
    for d in inc:  # normalised increments over disjoint intervals: unit variance, uncorrelated
        assert d.var().item() == pytest.approx(1.0, rel=0.05)
    for d1, d2 in zip(inc, inc[1:]):
        assert abs(torch.corrcoef(torch.stack([d1, d2]))[0, 1].item()) < 0.05


def test_brownian_noise_sampler_is_normalised():
    x = torch.zeros(4, 4, 32, 32)
    sampler = noise.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=1)
    z = sampler(torch.tensor(3.0), torch.tensor(2.0))
    assert z.shape == x.shape and z.std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.equal(z, noise.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=1)(3.0, 2.0))
