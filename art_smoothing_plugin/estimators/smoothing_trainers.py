"""Drop-ins for ART's smoothing trainers: :class:`SmoothAdvClassifier` for ``PyTorchSmoothAdv``,
:class:`MACERClassifier` for ``PyTorchMACER`` and :class:`SmoothMixClassifier` for ``PyTorchSmoothMix``.

Each takes its ART class's constructor arguments under the same names, with the same defaults and meaning,
and is a :class:`RandomizedSmoothingClassifier` in every other way (PREDICT, CERTIFY, gradients of the
smoothed classifier, ``get_params`` / ``set_params`` / ``clone_for_refitting``): a
``RandomizedSmoothingClassifier`` whose ``training`` is its method of :mod:`art_smoothing_plugin.training`,
which ``fit`` and ``fit_generator`` use, without ART 1.20.1's defects (docs/training.md lists each
difference and why):

* SmoothAdv: the adversary is L2 PGD on the smoothed soft classifier over the ``num_noise_vec`` draws used
  for training (ART: L-infinity PGD on the base model), its steps accumulate (ART restarts each step from
  the clean point), the ``epsilon`` warm-up reaches the adversary, and ``num_noise_vec > 1`` works.
* MACER: ``get_params`` and ``clone_for_refitting`` work (ART lists a ``gauss_num`` attribute that does not
  exist), and inputs of any rank are grouped correctly (ART assumes 4-D).
* SmoothMix: the PGD step is its own argument, ``step_size`` (ART uses ``alpha``, the certification error
  probability, 0.001), and points are clamped into ``clip_values``, not into [0, 1].
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from ..training import MACER, SmoothAdv, SmoothMix, TrainingMethod, as_training_method
from .randomized_smoothing import RandomizedSmoothingClassifier

__all__ = ["MACERClassifier", "SmoothAdvClassifier", "SmoothMixClassifier"]


def _hyper_parameter(name: str) -> property:
    """A property that reads and writes one hyper-parameter of the estimator's training method; a write
    builds a new method, so a bad value is refused (naming it) and the old one kept."""

    def get(self: _MethodTrainedClassifier) -> Any:
        return getattr(self.training, name)

    def set_(self: _MethodTrainedClassifier, value: Any) -> None:
        self.training = dataclasses.replace(self.training, **{name: value})

    return property(get, set_, doc=f"The training method's ``{name}`` (see :attr:`training`).")


class _MethodTrainedClassifier(RandomizedSmoothingClassifier):
    """A randomized smoothing estimator whose :attr:`training` is always one method (its class's)."""

    _method: type[TrainingMethod]

    @property
    def training(self) -> TrainingMethod:
        """The method ``fit`` and ``fit_generator`` train with, built from the hyper-parameters."""
        return self._training

    @training.setter
    def training(self, value: TrainingMethod | str | Mapping[str, Any]) -> None:
        method = as_training_method(value)
        if not isinstance(method, self._method):
            raise ValueError(
                f"{type(self).__name__} trains with {self._method.__name__}; got training={method!r}. Use "
                "RandomizedSmoothingClassifier(training=...) for another method"
            )
        self._training = method


#: ART's arguments of RandomizedSmoothingClassifier, ``model`` to ``alpha``: every drop-in takes them first,
#: under the same names, and passes them on as they are.
_PARAMETERS = list(inspect.signature(RandomizedSmoothingClassifier.__init__).parameters)
_BASE_ARGUMENTS = tuple(_PARAMETERS[1 : _PARAMETERS.index("alpha") + 1])
#: The keyword-only arguments of RandomizedSmoothingClassifier the drop-ins pass on (``training`` is theirs).
_ESTIMATOR_KEYWORDS = ("n0", "seed", "smoothed_gradients", "batch_size", "verbose")


def _base_arguments(arguments: dict[str, Any]) -> list[Any]:
    """The values of ``_BASE_ARGUMENTS`` among a drop-in constructor's ``locals()``, in order."""
    return [arguments[name] for name in _BASE_ARGUMENTS]


class SmoothAdvClassifier(_MethodTrainedClassifier):
    """SmoothAdv (Salman et al. 2019) as a drop-in for ART's ``PyTorchSmoothAdv``: the same constructor
    arguments, ``fit`` trains with :class:`art_smoothing_plugin.training.SmoothAdv`.

    :param epsilon: L2 radius of the adversary, in the units of ``x``.
    :param num_noise_vec: noise draws per input, shared by the attack and the training loss.
    :param num_steps: PGD steps, each of length ``2 * epsilon / num_steps``, accumulating.
    :param warmup: epochs over which the radius grows linearly to ``epsilon`` (1: none).

    The other arguments are :class:`RandomizedSmoothingClassifier`'s.
    """

    _method = SmoothAdv
    estimator_params = RandomizedSmoothingClassifier.estimator_params + [
        "epsilon",
        "num_noise_vec",
        "num_steps",
        "warmup",
    ]
    epsilon = _hyper_parameter("epsilon")
    num_noise_vec = _hyper_parameter("num_noise_vec")
    num_steps = _hyper_parameter("num_steps")
    warmup = _hyper_parameter("warmup")

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.modules.loss._Loss | None = None,
        input_shape: tuple[int, ...] | None = None,
        nb_classes: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        sample_size: int = 32,
        scale: float = 0.1,
        alpha: float = 0.001,
        epsilon: float = 1.0,
        num_noise_vec: int = 1,
        num_steps: int = 10,
        warmup: int = 1,
        **kwargs: Any,
    ) -> None:
        method = SmoothAdv(epsilon=epsilon, num_noise_vec=num_noise_vec, num_steps=num_steps, warmup=warmup)
        super().__init__(*_base_arguments(locals()), training=method, **_estimator_keywords(kwargs))


class MACERClassifier(_MethodTrainedClassifier):
    """MACER (Zhai et al. 2020) as a drop-in for ART's ``PyTorchMACER``: the same constructor arguments,
    ``fit`` trains with :class:`art_smoothing_plugin.training.MACER`.

    :param beta: inverse temperature of the soft output in the hinge.
    :param gamma: hinge margin.
    :param lmbda: weight of the robustness term.
    :param gaussian_samples: noise draws per input.

    The other arguments are :class:`RandomizedSmoothingClassifier`'s.
    """

    _method = MACER
    estimator_params = RandomizedSmoothingClassifier.estimator_params + [
        "beta",
        "gamma",
        "lmbda",
        "gaussian_samples",
    ]
    beta = _hyper_parameter("beta")
    gamma = _hyper_parameter("gamma")
    lmbda = _hyper_parameter("lmbda")
    gaussian_samples = _hyper_parameter("gaussian_samples")

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.modules.loss._Loss | None = None,
        input_shape: tuple[int, ...] | None = None,
        nb_classes: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        sample_size: int = 32,
        scale: float = 0.1,
        alpha: float = 0.001,
        beta: float = 16.0,
        gamma: float = 8.0,
        lmbda: float = 12.0,
        gaussian_samples: int = 16,
        **kwargs: Any,
    ) -> None:
        method = MACER(gaussian_samples=gaussian_samples, beta=beta, gamma=gamma, lmbda=lmbda)
        super().__init__(*_base_arguments(locals()), training=method, **_estimator_keywords(kwargs))


class SmoothMixClassifier(_MethodTrainedClassifier):
    """SmoothMix (Jeong et al. 2021) as a drop-in for ART's ``PyTorchSmoothMix``: the same constructor
    arguments plus ``step_size``, ``fit`` trains with :class:`art_smoothing_plugin.training.SmoothMix`.

    :param eta: weight of the mixup term.
    :param num_noise_vec: noise draws per input, shared by the attack and the loss.
    :param num_steps: PGD steps.
    :param warmup: epochs over which ``eta`` and ``maxnorm_s`` ramp up linearly (1: none).
    :param mix_step: the PGD step whose point is the clean side of the mixup (0: the input itself).
    :param maxnorm_s: radius of the clean side's ball (default ``step_size * mix_step``).
    :param maxnorm: radius of the adversary's ball (default none).
    :param step_size: PGD step length in the units of ``x`` (keyword only; ART uses ``alpha``, the
        certification error probability, as its step). Default 1.0, the authors'.

    The other arguments are :class:`RandomizedSmoothingClassifier`'s; ``alpha`` only means the error
    probability of ``certify`` and ``predict_labels``.
    """

    _method = SmoothMix
    estimator_params = RandomizedSmoothingClassifier.estimator_params + [
        "eta",
        "num_noise_vec",
        "num_steps",
        "warmup",
        "mix_step",
        "maxnorm_s",
        "maxnorm",
        "step_size",
    ]
    eta = _hyper_parameter("eta")
    num_noise_vec = _hyper_parameter("num_noise_vec")
    num_steps = _hyper_parameter("num_steps")
    warmup = _hyper_parameter("warmup")
    mix_step = _hyper_parameter("mix_step")
    maxnorm_s = _hyper_parameter("maxnorm_s")
    maxnorm = _hyper_parameter("maxnorm")
    step_size = _hyper_parameter("step_size")

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.modules.loss._Loss | None = None,
        input_shape: tuple[int, ...] | None = None,
        nb_classes: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        sample_size: int = 32,
        scale: float = 0.1,
        alpha: float = 0.001,
        eta: float = 1.0,
        num_noise_vec: int = 1,
        num_steps: int = 10,
        warmup: int = 1,
        mix_step: int = 0,
        maxnorm_s: float | None = None,
        maxnorm: float | None = None,
        *,
        step_size: float = 1.0,
        **kwargs: Any,
    ) -> None:
        method = SmoothMix(
            num_noise_vec=num_noise_vec,
            num_steps=num_steps,
            step_size=step_size,
            eta=eta,
            mix_step=mix_step,
            maxnorm_s=maxnorm_s,
            maxnorm=maxnorm,
            warmup=warmup,
        )
        super().__init__(*_base_arguments(locals()), training=method, **_estimator_keywords(kwargs))


def _estimator_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Our keyword-only additions (``n0``, ``seed``, ...), refusing any other name."""
    unknown = sorted(set(kwargs) - set(_ESTIMATOR_KEYWORDS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(unknown)}; besides ART's arguments these estimators "
            f"take {', '.join(_ESTIMATOR_KEYWORDS)}"
        )
    return kwargs
