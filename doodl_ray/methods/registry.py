"""Generation methods, one registry: each method declares what it is in a `MethodPlugin` (its name, a one-line
summary, its settings block and the function that runs it, the least budget that makes one image, what it
differentiates) and registers itself (`register_method`). The job spec's and `generate`'s method settings, the
budget minimums, the CLI's method list and help, and the benchmarks' grouping all come from here, so a new
method is its settings module and the module that implements it.

Torch-free: a spec validates at CLI start; a method's function is imported when it first runs. A spec names a
method of another package as `package.module:name`, which that module registers when imported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import ConfigDict, Field, model_serializer, model_validator

from doodl_ray.config import PriorConfig, SamplerConfig, StopConfig, StrictModel
from doodl_ray.errors import InvalidInput
from doodl_ray.plugins import load_attribute, registered

if TYPE_CHECKING:
    from doodl_ray.methods.base import MethodResult, Problem

Gradient = Literal["none", "one-step", "exact"]


@dataclass(frozen=True)
class MethodPlugin:
    """What a generation method is. `function(problem, config) -> MethodResult` is a callable or the
    `module:attribute` that holds it (imported on first use, so the registry stays torch-free)."""

    name: str
    summary: str  # one line: what it does (CLI help, docs)
    function: str | Callable[["Problem", "MethodConfig"], "MethodResult"]
    settings: type[StrictModel] | None = None  # its own settings block, `method.<block>` in a spec
    reads: tuple[str, ...] = ()  # other methods' blocks it uses (search-refine runs DOODL: `doodl`)
    guided: bool = True  # needs a guidance model
    gradient: Gradient = "none"  # what it differentiates: nothing, one-step estimates, or the true final pixels
    least_budget: Callable[["MethodConfig", int, int], int] = lambda config, sample, prior: sample
    """(config, UNet evaluations of one single-chain sample, of one prior evaluation) -> the least budget that
    makes one image."""
    block_name: str | None = None  # default: the name with '-' as '_'

    @property
    def block(self) -> str | None:
        if self.settings is None:
            return None
        return self.block_name or self.name.rsplit(":", 1)[-1].replace("-", "_")

    def run(self, problem: "Problem", config: "MethodConfig") -> "MethodResult":
        function = self.function
        if isinstance(function, str):
            function = load_attribute(function)
        return function(problem, config)


METHODS: dict[str, MethodPlugin] = {}
BLOCKS: dict[str, type[StrictModel]] = {}  # settings block name -> its model


def register_method(plugin: MethodPlugin) -> MethodPlugin:
    """Make `plugin` runnable by name from specs, `generate` and the engine."""
    if plugin.block is not None:
        owner = BLOCKS.get(plugin.block)
        if owner is not None and owner is not plugin.settings:
            raise ValueError(f"method {plugin.name!r}: settings block {plugin.block!r} belongs to another method")
        BLOCKS[plugin.block] = plugin.settings
    METHODS[plugin.name] = plugin
    return plugin


def method_plugin(name: str) -> MethodPlugin:
    """The registered method `name`; `package.module:name` imports that module first. Unknown: one line."""
    return registered(name, METHODS, "method")


class MethodConfig(StrictModel):
    """Which generation method to run (`method.name`), the settings every method shares, and the settings blocks
    of registered methods (`method.doodl`, `method.particles`, ...), each checked by its method's own model.
    A block that no registered method declares is an error, like any unknown key."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field("doodl", description="A registered method (`doodl-ray generate --help` lists them), or "
                      "package.module:name for one another package registers.")
    budget: int | None = Field(
        None, ge=1, description="Compute per item in UNet evaluations (network passes, forward and VJP alike; "
        "CFG counts 2): sets candidates / iterations / particles. None: each method's own counts.",
    )
    guidance_scale: float = Field(1.0, ge=0, description="Scale s of the guidance loss (DOODL) or gradient (one-step).")
    normalize_gradient: bool = Field(True, description="one-step: normalize the guidance gradient to unit RMS per image.")
    candidates: int | None = Field(
        None, ge=1, description="best-of-n: unguided samples to pick from (default 8); one-step: guided samples to "
        "pick from (default 1). A budget sets it instead.",
    )
    sampler: SamplerConfig = SamplerConfig()
    prior: PriorConfig = PriorConfig()
    stop: StopConfig = StopConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_and_blocks(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            method_plugin(str(data.get("name", "doodl")))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        data = dict(data)
        for key in set(data) - set(cls.model_fields):
            settings = BLOCKS.get(key)
            if settings is None:
                raise ValueError(f"unknown method setting {key!r}; the registered methods' blocks are: "
                                 f"{', '.join(sorted(BLOCKS))}")
            value = data[key]
            data[key] = value if isinstance(value, settings) else settings.model_validate(value or {})
        return data

    @model_validator(mode="after")
    def _budget_makes_an_image(self) -> "MethodConfig":
        """A budget below one image's compute, checked with the spec at one network pass per evaluation (the engine
        checks again with the model's passes: CFG counts 2)."""
        try:
            check_budget(self, self.sampler.steps, len(self.prior.levels))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return self

    def __getattr__(self, item: str) -> Any:
        """A registered block that the spec left out reads as its defaults."""
        try:
            return super().__getattr__(item)
        except AttributeError:
            settings = BLOCKS.get(item)
            if settings is None:
                raise
            return settings()

    @model_serializer(mode="wrap")
    def _with_used_blocks(self, handler: Any) -> dict[str, Any]:
        """Shared settings, the blocks given, and the blocks this method uses even when left at their defaults:
        what decides its results (the job's result hash, provenance)."""
        data = handler(self)
        plugin = self.plugin
        for block in filter(None, (plugin.block, *plugin.reads)):
            if block not in data:
                data[block] = getattr(self, block).model_dump()
        return data

    @property
    def plugin(self) -> MethodPlugin:
        return method_plugin(self.name)


def check_budget(config: MethodConfig, sample_cost: int, prior_cost: int) -> None:
    """A budget below what the method needs to make one image is an error before any work. `sample_cost` and
    `prior_cost`: UNet evaluations of one single-chain sample and of one prior evaluation."""
    need = config.plugin.least_budget(config, sample_cost, prior_cost)
    if config.budget is not None and config.budget < need:
        raise InvalidInput(f"method {config.name} needs a budget of at least {need} UNet evaluations at "
                           f"{config.sampler.steps} steps (got {config.budget})")
