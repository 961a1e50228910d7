"""Samplers (engine/sampling): convergence on an analytic denoiser, distributions and seeds of the
stochastic samplers, the callback contract, and numbers cross-checked against k-diffusion and ComfyUI.

K_DIFFUSION values were computed with k-diffusion 0.1.1.post1's `k_diffusion/sampling.py`, and COMFYUI values
with ComfyUI 0.3.75's code (comfy/k_diffusion/sampling.py, comfy/extra_samplers/uni_pc.py,
comfy/model_sampling.py, with the v0.26 seed + 1 rule of default_noise_sampler on the CPU), on the same
toy models and inputs as below. Each entry is [sum, sum of squares, first four values] of the result.
"""

import math

import pytest
import torch

from engine.sampling import SAMPLERS, noise
from engine.sampling.denoiser import PREDICTIONS, Denoiser, FlowPrediction, is_max_denoise
from engine.sampling.schedulers import karras_sigmas, ksampler_sigmas
from engine.sampling.schedules import DiscreteSchedule, FlowSchedule

MU, S = 0.3, 0.7  # the data distribution of the analytic denoisers: N(MU, S²) per element

ODE_SAMPLERS = ["euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ipndm", "deis", "ddim", "uni_pc", "uni_pc_bh2"]
ETA_SAMPLERS = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                "dpmpp_2m_sde_heun", "dpmpp_3m_sde"]
# asymptotic order on a smooth karras grid; multistep methods are held to 2 by their first-order start
ORDER = {"euler": 1, "heunpp2": 1, "ddim": 1, "euler_ancestral": 1, "lms": 3, "deis": 2.5}


# --- analytic denoisers -------------------------------------------------------------------------

def gaussian_denoiser(x, sigma, **extra_args):
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(MU, S²): MU + S² / (S² + sigma²) (x - MU)."""
    s2 = sigma.view(-1, 1, 1, 1).double() ** 2
    return (MU + S ** 2 / (S ** 2 + s2) * (x.double() - MU)).to(x.dtype)


def exact_ode(x, sigma_from, sigma_to):
    """The probability-flow ODE for the Gaussian keeps (x - MU) / sqrt(S² + sigma²) fixed."""
    return MU + (x - MU) * math.sqrt(S ** 2 + sigma_to ** 2) / math.sqrt(S ** 2 + sigma_from ** 2)


class FlowGaussian:
    """E[x0 | (1 - sigma) x0 + sigma eps = x] for x0 ~ N(MU, S²), a flow model for the samplers."""

    prediction = FlowPrediction()
    schedule = FlowSchedule(shift=3.0)

    def __call__(self, x, sigma, **extra_args):
        s = sigma.view(-1, 1, 1, 1).double()
        a = 1 - s
        return (MU + a * S ** 2 / (a ** 2 * S ** 2 + s ** 2) * (x.double() - a * MU)).to(x.dtype)


def exact_flow(x, sigma_from, sigma_to):
    std = lambda s: math.sqrt((1 - s) ** 2 * S ** 2 + s ** 2)
    return (1 - sigma_to) * MU + (x - (1 - sigma_from) * MU) * std(sigma_to) / std(sigma_from)


def run(name, model, x, sigmas, **options):
    return SAMPLERS[name](model, x.clone(), sigmas.clone(), **options)


# --- toy models for the cross-checks ------------------------------------------------------------

def toy_denoiser(x, sigma, **extra_args):
    s = sigma.view(-1, 1, 1, 1)
    return 0.8 * x / (1 + s ** 2) ** 0.5 + 0.1 * torch.tanh(x) * s / (1 + s)


def toy_net(x_in, t, **cond):
    tt = t.view(-1, 1, 1, 1)
    return 0.7 * x_in * torch.cos(tt / 300.0) + 0.2 * torch.sin(1.3 * x_in + tt / 200.0)


class CountingNoise:
    """Noise that depends only on how many times it was drawn, the same for any implementation."""

    def __init__(self, shape):
        self.shape, self.calls = shape, 0

    def __call__(self, sigma, sigma_next):
        self.calls += 1
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(self.calls))


def summary(x):
    return [x.sum().item(), x.square().sum().item()] + x.flatten()[:4].tolist()


def kdiffusion_case(name, **options):
    """k-diffusion's frame: a VE denoiser, karras sigmas, x = sigma_max * randn. k-diffusion's LMS
    extrapolates the step to sigma = 0 where ComfyUI (and Loom) return D, so LMS stops before it."""
    sigmas = karras_sigmas(8, 0.03, 10.0)
    sigmas = sigmas[:-1] if name == "lms" else sigmas
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4) * sigmas[0]
    if "noise_sampler" in options:
        options["noise_sampler"] = CountingNoise(x.shape)
    return SAMPLERS[name](toy_denoiser, x, sigmas, **options)


COMFY_CASES = {
    "eps": (lambda: Denoiser(toy_net, PREDICTIONS["eps"], DiscreteSchedule()), "karras"),
    "v_zsnr": (lambda: Denoiser(toy_net, PREDICTIONS["v"], DiscreteSchedule(zsnr=True)), "normal"),
    "flow": (lambda: Denoiser(toy_net, PREDICTIONS["flow"], FlowSchedule(shift=3.0)), "simple"),
}


def comfyui_case(case, name, denoise=1.0, counting_noise=False):
    """A KSampler run without guidance: seed 42 noise, 6 steps, noise scaling in and out."""
    make_model, scheduler = COMFY_CASES[case]
    model = make_model()
    latent = torch.zeros(1, 2, 4, 4) if denoise == 1.0 else torch.linspace(-1, 1, 32).view(1, 2, 4, 4)
    initial = noise.prepare_noise(latent, 42)
    sigmas = ksampler_sigmas(model.schedule, scheduler, 6, name, denoise)
    x = model.prediction.noise_scaling(sigmas[0], initial, latent, is_max_denoise(model.schedule, sigmas))
    options = {"noise_sampler": CountingNoise(x.shape)} if counting_noise else {}
    x = SAMPLERS[name](model, x, sigmas, extra_args={"seed": 42}, **options)
    return model.prediction.inverse_noise_scaling(sigmas[-1], x)


# (sampler, options, summary); "noise_sampler": True means CountingNoise
K_DIFFUSION = [
    ('euler', {}, [0.26943302154541016, 19.895679473876953, -0.888607919216156, -0.9081093072891235, -0.2238953858613968, -0.36984148621559143]),
    ('heun', {}, [0.2032976746559143, 11.93793773651123, -0.6885948777198792, -0.7037914991378784, -0.1691388189792633, -0.28326255083084106]),
    ('dpm_2', {}, [0.22496169805526733, 14.470939636230469, -0.7581353783607483, -0.7748485207557678, -0.18683040142059326, -0.31240615248680115]),
    ('lms', {}, [0.32416093349456787, 29.73688316345215, -1.0863760709762573, -1.1102937459945679, -0.270377516746521, -0.4495714008808136]),
    ('lms', {'order': 3}, [0.3255409002304077, 29.948684692382812, -1.0902252197265625, -1.1142245531082153, -0.27142611145973206, -0.4512929618358612]),
    ('dpm_fast', {}, [0.25589072704315186, 18.469036102294922, -0.8563089966773987, -0.8751895427703857, -0.21091216802597046, -0.35292524099349976]),
    ('dpm_adaptive', {}, [0.27279436588287354, 21.645212173461914, -0.9267364144325256, -0.947189211845398, -0.23006875813007355, -0.3827306926250458]),
    ('dpm_adaptive', {'order': 2, 'rtol': 0.01, 'atol': 0.001}, [0.28719401359558105, 23.900699615478516, -0.9740786552429199, -0.9955759048461914, -0.239821195602417, -0.4011886417865753]),
    ('dpmpp_2m', {}, [0.2542569637298584, 18.410884857177734, -0.8553195595741272, -0.8741703629493713, -0.20973476767539978, -0.35190361738204956]),
    ('euler_ancestral', {'noise_sampler': True}, [-0.5421552658081055, 9.830349922180176, -0.8009739518165588, 0.4422469437122345, -1.0632697343826294, -0.9359013438224792]),
    ('euler_ancestral', {'noise_sampler': True, 'eta': 0.6, 's_noise': 0.9}, [-1.2993683815002441, 18.89057159423828, -1.2390347719192505, -0.23994319140911102, -0.983232855796814, -1.043813943862915]),
    ('dpm_2_ancestral', {'noise_sampler': True}, [-0.3999840021133423, 1.8192883729934692, -0.3639582693576813, 0.17674021422863007, -0.4561919867992401, -0.44518300890922546]),
    ('dpmpp_2s_ancestral', {'noise_sampler': True}, [-0.5363519191741943, 6.145234107971191, -0.6466163992881775, 0.3325900733470917, -0.8423779010772705, -0.7657455205917358]),
    ('dpmpp_sde', {'noise_sampler': True}, [-1.2240962982177734, 5.7624831199646, -0.9751130938529968, 0.5844214558601379, -0.10187049210071564, -0.9713265299797058]),
    ('dpmpp_sde', {'noise_sampler': True, 'eta': 0.5, 'r': 0.4}, [-1.0625426769256592, 15.45565128326416, -1.4175139665603638, 0.15656523406505585, -0.48438355326652527, -1.0495612621307373]),
    ('dpmpp_2m_sde', {'noise_sampler': True}, [0.3452425003051758, 10.866884231567383, -0.47082871198654175, 0.8075252771377563, -1.1227047443389893, -0.8331910371780396]),
    ('dpmpp_2m_sde', {'noise_sampler': True, 'solver_type': 'heun', 'eta': 0.7}, [0.09921759366989136, 13.11515998840332, -0.5945786833763123, 0.8020803332328796, -1.238334059715271, -0.9510709643363953]),
    ('dpmpp_3m_sde', {'noise_sampler': True}, [-3.224246025085449, 9.560186386108398, -0.05853986740112305, 0.4032990634441376, -0.7782514691352844, -0.8477755784988403]),
]

# (model, sampler, denoise, counting noise for the SDE samplers, summary)
COMFYUI = [
    ('eps', 'euler', 1.0, False, [180.3609619140625, 21128.09375, 44.56125259399414, 34.993377685546875, 21.329177856445312, -52.73258972167969]),
    ('eps', 'euler_ancestral', 1.0, False, [199.72291564941406, 31480.234375, 51.44075012207031, 40.091922760009766, 39.39114761352539, -60.57027816772461]),
    ('eps', 'heun', 1.0, False, [146.9585418701172, 15095.640625, 37.678977966308594, 29.47172737121582, 17.28721809387207, -43.62406539916992]),
    ('eps', 'heunpp2', 1.0, False, [196.2290496826172, 25440.064453125, 48.541072845458984, 38.72471237182617, 23.4705753326416, -56.92249298095703]),
    ('eps', 'dpm_2', 1.0, False, [171.0455322265625, 21868.708984375, 46.16801452636719, 34.303375244140625, 21.844507217407227, -51.705810546875]),
    ('eps', 'lms', 1.0, False, [175.00140380859375, 19911.8046875, 43.15045166015625, 33.79728698730469, 20.856630325317383, -50.77561569213867]),
    ('eps', 'dpm_fast', 1.0, False, [78.48167419433594, 4487.8388671875, 20.888080596923828, 15.998062133789062, 9.652362823486328, -23.615928649902344]),
    ('eps', 'dpm_adaptive', 1.0, False, [186.76942443847656, 27231.544921875, 51.133060455322266, 39.04556655883789, 23.77012062072754, -57.92605972290039]),
    ('eps', 'ddim', 1.0, False, [180.3609619140625, 21128.09375, 44.56125259399414, 34.993377685546875, 21.329177856445312, -52.73258972167969]),
    ('eps', 'dpm_2_ancestral', 1.0, False, [104.06480407714844, 10050.2451171875, 31.401905059814453, 23.155006408691406, 18.203121185302734, -34.91484069824219]),
    ('eps', 'dpmpp_2s_ancestral', 1.0, False, [190.4746551513672, 29261.46875, 51.454410552978516, 39.31224060058594, 33.42184066772461, -59.057682037353516]),
    ('eps', 'ddpm', 1.0, False, [199.72293090820312, 31480.24609375, 51.440757751464844, 40.091922760009766, 39.391143798828125, -60.57028579711914]),
    ('eps', 'lcm', 1.0, False, [222.78265380859375, 39232.91015625, 56.94112014770508, 44.186195373535156, 44.27097702026367, -67.7220230102539]),
    ('eps', 'ipndm', 1.0, False, [142.7532958984375, 13533.404296875, 35.68323516845703, 28.047460556030273, 16.82579803466797, -41.80670928955078]),
    ('eps', 'deis', 1.0, False, [166.75506591796875, 18337.0625, 41.61528778076172, 32.70246887207031, 19.85103988647461, -48.60272979736328]),
    ('eps', 'uni_pc', 1.0, False, [105.80960083007812, 7360.17822265625, 26.437740325927734, 20.163787841796875, 12.619009971618652, -31.19911766052246]),
    ('eps', 'uni_pc_bh2', 1.0, False, [132.9985809326172, 11764.8017578125, 33.04353713989258, 25.45606231689453, 15.345780372619629, -39.14012145996094]),
    ('eps', 'dpmpp_2m', 1.0, False, [158.472412109375, 17220.625, 40.44678497314453, 31.683900833129883, 18.84659194946289, -47.193359375]),
    ('eps', 'euler', 0.6, False, [9.02430534362793, 75.99278259277344, 1.8069897890090942, 1.1807900667190552, 0.3663315773010254, -3.147092342376709]),
    ('eps', 'dpmpp_2m', 0.6, False, [7.299010276794434, 46.58853530883789, 1.4154220819473267, 0.8974686861038208, 0.25658178329467773, -2.5651445388793945]),
    ('eps', 'uni_pc', 0.6, False, [10.77402114868164, 92.39949035644531, 2.2382943630218506, 1.5567729473114014, 0.6233867406845093, -3.5408859252929688]),
    ('eps', 'dpmpp_sde', 1.0, True, [154.2459716796875, 54885.859375, 39.43376922607422, 50.33241653442383, 13.241462707519531, -103.73096466064453]),
    ('eps', 'dpmpp_2m_sde', 1.0, True, [113.4724349975586, 35614.78125, 35.09120559692383, 37.397850036621094, 14.57101058959961, -82.57281494140625]),
    ('eps', 'dpmpp_3m_sde', 1.0, True, [26.79918670654297, 2299.9404296875, -8.126094818115234, -2.960094451904297, -6.119408130645752, 17.684757232666016]),
    ('v_zsnr', 'euler', 1.0, False, [4.642787933349609, 17.08815574645996, 1.3415993452072144, 1.044485092163086, 0.5986745953559875, -1.2680169343948364]),
    ('v_zsnr', 'dpmpp_2m', 1.0, False, [2.9038286209106445, 10.435959815979004, 1.2442415952682495, 0.8217307925224304, 0.31147247552871704, -1.1750825643539429]),
    ('v_zsnr', 'euler_ancestral', 1.0, False, [-3.300412893295288, 7.690861701965332, -0.18292707204818726, -0.1764955222606659, -0.4725150167942047, -0.5750843286514282]),
    ('flow', 'euler', 1.0, False, [9.687686920166016, 64.50581359863281, 2.428267002105713, 1.9548028707504272, 1.2509877681732178, -2.605552911758423]),
    ('flow', 'heun', 1.0, False, [8.799787521362305, 56.037689208984375, 2.288677215576172, 1.8347066640853882, 1.1529392004013062, -2.381092071533203]),
    ('flow', 'euler_ancestral', 1.0, False, [-3.8130602836608887, 22.331134796142578, -0.19414955377578735, 0.32181861996650696, -0.582435131072998, -1.4994738101959229]),
    ('flow', 'dpm_2_ancestral', 1.0, False, [-5.308271884918213, 31.328826904296875, -0.6301864385604858, 0.3764030337333679, -0.8342111706733704, -1.7416349649429321]),
    ('flow', 'dpmpp_2s_ancestral', 1.0, False, [-4.461203575134277, 17.753742218017578, -0.3005010485649109, 0.24378255009651184, -0.5715265274047852, -1.3127946853637695]),
    ('flow', 'lcm', 1.0, False, [-5.02711820602417, 15.171507835388184, -0.8246003985404968, -0.20545437932014465, -1.045149564743042, -0.9642005562782288]),
    ('flow', 'dpmpp_2m', 1.0, False, [8.988386154174805, 59.61616516113281, 2.330266237258911, 1.8878532648086548, 1.206700086593628, -2.393467664718628]),
    ('flow', 'euler', 0.6, False, [5.845436096191406, 30.862171173095703, 1.5146193504333496, 1.1385271549224854, 0.6043405532836914, -1.866638422012329]),
    ('flow', 'euler_ancestral', 0.6, False, [-1.670313835144043, 13.637303352355957, 0.234735906124115, 0.45668041706085205, -0.14271098375320435, -1.4416922330856323]),
    ('flow', 'dpmpp_sde', 1.0, True, [-2.48962664604187, 16.981033325195312, -1.619572639465332, 1.0319360494613647, -0.269491970539093, -1.7068157196044922]),
    ('flow', 'dpmpp_2m_sde', 1.0, True, [0.22495734691619873, 29.394283294677734, -0.6693057417869568, 1.4835894107818604, -1.5731451511383057, -1.0872087478637695]),
    ('flow', 'dpmpp_3m_sde', 1.0, True, [-3.0282065868377686, 34.73536682128906, -0.6353423595428467, 1.4979872703552246, -1.2073688507080078, -0.8302556872367859]),
]


# --- cross-checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,expected", K_DIFFUSION)
def test_matches_k_diffusion(name, options, expected):
    assert summary(kdiffusion_case(name, **options)) == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("case,name,denoise,counting_noise,expected", COMFYUI)
def test_matches_comfyui(case, name, denoise, counting_noise, expected):
    assert summary(comfyui_case(case, name, denoise, counting_noise)) == pytest.approx(expected, rel=1e-5, abs=1e-5)


# --- convergence on the analytic denoiser -------------------------------------------------------

def _ode_error(name, steps, **options):
    """Max error against the exact ODE solution from sigma 10 to 0.1 (no final step to 0)."""
    sigmas = karras_sigmas(steps + 1, 0.1, 10.0).double()[:-1]
    torch.manual_seed(0)
    x = MU + math.sqrt(S ** 2 + 100) * torch.randn(1, 1, 8, 8, dtype=torch.float64)
    return (run(name, gaussian_denoiser, x, sigmas, **options) - exact_ode(x, 10.0, 0.1)).abs().max().item()


@pytest.mark.parametrize("name", ODE_SAMPLERS + ETA_SAMPLERS)
def test_deterministic_samplers_converge_with_their_order(name):
    options = {"eta": 0.0} if name in ETA_SAMPLERS else {}
    coarse, fine = _ode_error(name, 32, **options), _ode_error(name, 64, **options)
    assert fine < 0.05 * ORDER.get(name, 2) ** -2 and fine < coarse
    assert math.log2(coarse / fine) > ORDER.get(name, 2) - 0.3


def test_dpm_fast_and_adaptive_converge():
    errors = [_ode_error("dpm_fast", n) for n in (6, 24, 90)]  # its last low-order step makes it bumpy
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3
    assert _ode_error("dpm_adaptive", 1, rtol=1e-4, atol=1e-5) < 1e-3
    assert _ode_error("dpm_adaptive", 1, order=2, rtol=1e-3, atol=1e-4) < 1e-2


@pytest.mark.parametrize("name", ODE_SAMPLERS + ["dpm_fast", "dpm_adaptive"])
def test_deterministic_samplers_reach_the_data_at_sigma_zero(name):
    sigmas = karras_sigmas(40, 0.002, 10.0)
    torch.manual_seed(1)
    x = MU + math.sqrt(S ** 2 + 100) * torch.randn(1, 2, 8, 8)
    out = run(name, gaussian_denoiser, x, sigmas)
    first_order = ORDER.get(name) == 1 or name == "dpm_adaptive"  # the latter at its default rtol 0.05
    assert (out - exact_ode(x, 10.0, 0.0)).abs().max().item() < (0.15 if first_order else 0.015)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "uni_pc"] + ETA_SAMPLERS)
def test_flow_models_follow_the_flow_ode(name):
    options = {"eta": 0.0} if name in ETA_SAMPLERS else {}
    sigmas = karras_sigmas(41, 0.05, 1.0)[:-1]
    torch.manual_seed(2)
    x = torch.randn(1, 1, 8, 8)
    out = run(name, FlowGaussian(), x, sigmas, **options)
    assert (out - exact_flow(x, 1.0, 0.05)).abs().max().item() < (0.1 if ORDER.get(name) == 1 else 8e-3)


def test_ddim_is_euler():
    assert SAMPLERS["ddim"] is SAMPLERS["euler"]


# --- stochastic samplers ------------------------------------------------------------------------

STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
              "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ddpm"]


# 100 karras steps: the first-order ancestral step still shrinks the variance by ~4 %
STD_TOLERANCE = {"euler_ancestral": 0.06, "ddpm": 0.06}


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_sample_the_data_distribution(name):
    sigmas = karras_sigmas(100, 0.01, 10.0)
    torch.manual_seed(3)
    x = MU + math.sqrt(S ** 2 + 100) * torch.randn(1, 1, 128, 128)
    out = run(name, gaussian_denoiser, x, sigmas, extra_args={"seed": 7})
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(S, rel=STD_TOLERANCE.get(name, 0.03))


@pytest.mark.parametrize("name", STOCHASTIC[:-1])
def test_stochastic_samplers_on_flow_models(name):
    sigmas = ksampler_sigmas(FlowGaussian.schedule, "karras", 100)
    torch.manual_seed(4)
    x = torch.randn(1, 1, 128, 128)
    out = run(name, FlowGaussian(), x, sigmas, extra_args={"seed": 7})
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(S, rel=STD_TOLERANCE.get(name, 0.03))


@pytest.mark.parametrize("name", STOCHASTIC + ["lcm"])
def test_stochastic_samplers_are_reproducible_per_seed(name):
    model = Denoiser(toy_net, PREDICTIONS["eps"], DiscreteSchedule())
    sigmas = ksampler_sigmas(model.schedule, "karras", 5)
    torch.manual_seed(5)
    x = torch.randn(1, 2, 4, 4) * sigmas[0]
    first = run(name, model, x, sigmas, extra_args={"seed": 11})
    assert torch.equal(first, run(name, model, x, sigmas, extra_args={"seed": 11}))
    assert not torch.allclose(first, run(name, model, x, sigmas, extra_args={"seed": 12}))


def test_lcm_jumps_to_x0_and_renoises():
    model = Denoiser(toy_net, PREDICTIONS["eps"], DiscreteSchedule())
    sigmas = torch.tensor([14.6146, 3.0, 0.0])
    x = torch.ones(1, 2, 2, 2) * 14.6146
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))  # seed 3 + 1 on the CPU
    x0 = model(x, sigmas[:1])
    expected = model(x0 + 3.0 * fresh, sigmas[1:2])
    assert torch.allclose(run("lcm", model, x, sigmas, extra_args={"seed": 3}), expected)


# --- callback and cancellation ------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in SAMPLERS if not n.endswith("_gpu")])
def test_callback_reports_every_step_and_can_cancel(name):
    model = Denoiser(toy_net, PREDICTIONS["eps"], DiscreteSchedule())
    sigmas = ksampler_sigmas(model.schedule, "karras", 4, name)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    reports = []
    run(name, model, x, sigmas, extra_args={"seed": 1}, callback=reports.append)
    assert len(reports) >= (1 if name == "dpm_fast" else len(sigmas) - 1)
    assert all({"i", "x", "sigma", "denoised"} <= set(r) for r in reports)
    assert reports[0]["i"] == 0 and reports[0]["denoised"].shape == x.shape

    class Cancelled(Exception):
        pass

    def cancel(report):
        if report["i"] == 1:
            raise Cancelled

    calls = []
    counted = Denoiser(lambda x_in, t: calls.append(t) or toy_net(x_in, t), model.prediction, model.schedule)
    with pytest.raises(Cancelled):
        run(name, counted, x, sigmas, extra_args={"seed": 1}, callback=cancel)
    assert len(calls) < len(sigmas) * 3


# --- a Gaussian mixture with a closed-form denoiser (theory.md §3.1) -----------------------------

WEIGHTS, MEANS, STDS = (0.4, 0.6), (-1.0, 1.5), (0.3, 0.5)


def mixture_denoiser(x, sigma, **extra_args):
    """E[x0 | x0 + sigma eps = x] for x0 ~ sum_k w_k N(m_k, s_k²), elementwise: the posterior weights
    of the components times each component's Gaussian posterior mean."""
    x = x.double()
    s2 = sigma.view(-1, 1, 1, 1).double() ** 2
    logs, means = [], []
    for w, m, s in zip(WEIGHTS, MEANS, STDS):
        var = s ** 2 + s2
        logs.append(math.log(w) - 0.5 * torch.log(var) - 0.5 * (x - m) ** 2 / var)
        means.append(m + s ** 2 / var * (x - m))
    post = torch.softmax(torch.stack(logs), dim=0)
    return (post * torch.stack(means)).sum(0).float()


def mixture_moments():
    mean = sum(w * m for w, m in zip(WEIGHTS, MEANS))
    second = sum(w * (s ** 2 + m ** 2) for w, m, s in zip(WEIGHTS, MEANS, STDS))
    return mean, math.sqrt(second - mean ** 2)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "uni_pc", "euler_ancestral", "dpmpp_2m_sde"])
def test_samplers_reproduce_a_gaussian_mixture(name):
    sigmas = karras_sigmas(60, 0.01, 20.0)
    torch.manual_seed(8)
    mean, std = mixture_moments()
    x = torch.randn(1, 1, 128, 128) * math.sqrt(std ** 2 + 400) + mean
    out = run(name, mixture_denoiser, x, sigmas, extra_args={"seed": 3})
    assert out.mean().item() == pytest.approx(mean, abs=0.03)
    assert out.std().item() == pytest.approx(std, rel=0.03)
    # both modes are there in the right proportion
    assert (out < 0.25).float().mean().item() == pytest.approx(WEIGHTS[0], abs=0.03)


def test_ddim_step_equals_dpm_solver_1_and_euler():
    """DDIM (eta 0) in VP form, DPM-Solver-1 and Euler in VE form are one update (theory.md §4)."""
    torch.manual_seed(9)
    sigma_s, sigma_t = torch.tensor([2.0]), torch.tensor([0.7])
    x = torch.randn(1, 1, 16, 16) * 2.0
    x0 = mixture_denoiser(x, sigma_s)
    # DDIM in VP coordinates: z = x / sqrt(1 + sigma²), alpha_bar = 1 / (1 + sigma²)
    ab_s, ab_t = 1 / (1 + sigma_s ** 2), 1 / (1 + sigma_t ** 2)
    z_s = x * ab_s.sqrt()
    eps = (z_s - ab_s.sqrt() * x0) / (1 - ab_s).sqrt()
    ddim = (ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    # DPM-Solver-1 (noise prediction, log-SNR step h): x_t = x_s - sigma_t (e^h - 1) eps, alpha = 1 in VE
    h = torch.log(sigma_s / sigma_t)
    dpm1 = x - sigma_t * (torch.exp(h) - 1) * (x - x0) / sigma_s
    euler = run("euler", mixture_denoiser, x, torch.cat([sigma_s, sigma_t]))
    first_order_2m = run("dpmpp_2m", mixture_denoiser, x, torch.cat([sigma_s, sigma_t]))
    assert torch.allclose(ddim, euler, atol=1e-5)
    assert torch.allclose(dpm1, euler, atol=1e-5)
    assert torch.allclose(first_order_2m, euler, atol=1e-5)
