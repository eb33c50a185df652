"""Console forms of rollouts: create a distribution, confirm an operator's action."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from hotswap.exceptions import ApplicationError
from models_app.models import ModelVersion
from models_app.shipping import shippable_versions_q
from rollouts.criteria import DEFAULT_CRITERIA
from rollouts.models import Distribution, RollbackPolicy, Strategy
from rollouts.strategies.ab_test import METRICS

GATES = [("", "— strategy default (automatic) —"), ("automatic", "automatic"), ("manual", "manual: wait for approval")]
DURATION_HELP = "ISO 8601 duration, e.g. PT30M, PT1H, PT0S; empty: the strategy's default."

# Which form fields make up each strategy's configuration (the key the service expects, when it differs).
STRATEGY_FIELDS: dict[str, dict[str, str]] = {
    Strategy.DIRECT: {"soak": "soak"},
    Strategy.CANARY: {"percent": "percent", "soak": "soak", "gate": "gate", "final_soak": "final_soak"},
    Strategy.PROGRESSIVE: {"percentages": "percentages", "stages": "stages", "soak": "soak", "gate": "gate"},
    Strategy.REGIONAL: {"regions": "regions", "delay": "delay", "soak": "soak", "gate": "gate"},
    Strategy.AB_TEST: {"split": "split", "window": "window", "metric": "metric",
                       "min_improvement": "min_improvement"},
}
TARGET_FIELDS = {"target_regions": "regions", "target_device_types": "device_types", "target_tags": "tags",
                 "target_device_ids": "device_ids", "target_min_memory_mb": "min_memory_mb"}
# The form's success-criteria fields carry the criteria's own names, in DEFAULT_CRITERIA's order.
CRITERIA_FIELDS = list(DEFAULT_CRITERIA)
_SPLIT = re.compile(r"[\s,]+")


def distributable_versions():
    """Versions the service accepts for a new distribution: passed, or approved by an Admin, not deprecated."""
    return (ModelVersion.objects.filter(shippable_versions_q()).select_related("ai_model")
            .order_by("ai_model__name", "-precedence"))


def _criterion(key: str, label: str, text: str, unit: str = "") -> forms.Field:
    # Empty by default so that the service applies its defaults; the help text names them.
    default = DEFAULT_CRITERIA[key]
    shown = "none" if default is None else f"{default:g}{' ' + unit if unit else ''}"
    field = forms.IntegerField if key.startswith("min_") else forms.FloatField
    return field(required=False, label=label, help_text=f"{text} Empty: the default, {shown}.")


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        return obj.model_id if obj.status == ModelVersion.Status.PASSED else f"{obj.model_id} (approved by an Admin)"


def _names(value: str) -> list[str]:
    return [item for item in _SPLIT.split(value or "") if item]


def _number(value: float) -> int | float:
    # 10 rather than 10.0 in the stored configuration, as the API would send it.
    return int(value) if float(value).is_integer() else value


class DistributionCreateForm(forms.Form):
    """Everything distribution_create takes, as plain fields; clean() builds its config and target."""

    name = forms.CharField(max_length=200, required=False, help_text="Optional; shown in lists and the audit trail.")
    version = VersionChoiceField(queryset=distributable_versions(), empty_label=None,
                                 help_text="Only versions that passed validation (or an Admin approved) are listed.")
    version_b = VersionChoiceField(queryset=distributable_versions(), required=False,
                                   label="Version B (A/B test)", empty_label="— none —",
                                   help_text="The challenger of an A/B test, of the same model.")
    strategy = forms.ChoiceField(
        choices=[("", "Automatic (by the number of target devices)"), *Strategy.choices], required=False,
        help_text="Automatic: direct below 10 devices, canary up to 100, progressive above; an A/B test when "
                  "version B is given. Automatic uses the chosen strategy's default settings.")

    percent = forms.FloatField(required=False, label="Canary percent", help_text="Share of the target set "
                               "in the canary stage (default 10).")
    percentages = forms.CharField(required=False, help_text="Cumulative percentages, e.g. 10, 25, 50, 100 "
                                  "(default). Ignored when stages are given.")
    stages = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4, "cols": 40}),
                             help_text="One stage per line: percent [soak] [gate], e.g. “10 PT1H manual”; the "
                                       "last one must be 100.")
    soak = forms.CharField(required=False, max_length=32, help_text=DURATION_HELP)
    final_soak = forms.CharField(required=False, max_length=32, label="Final soak",
                                 help_text="Soak of the last stage of a canary. " + DURATION_HELP)
    gate = forms.ChoiceField(choices=GATES, required=False,
                             help_text="Manual: every stage waits for an operator's approval after its soak.")
    regions = forms.CharField(required=False, label="Region order",
                              help_text="Regions in rollout order, e.g. eu-west, us-east (default: smallest "
                                        "first); unlisted regions follow in a last stage.")
    delay = forms.CharField(required=False, max_length=32, help_text="Wait between regions. " + DURATION_HELP)
    split = forms.FloatField(required=False, help_text="Share of devices on version A, in percent (default 50).")
    window = forms.CharField(required=False, max_length=32, label="Test window", help_text=DURATION_HELP)
    metric = forms.ChoiceField(choices=[("", "— default (latency_p99_ms) —"), *((m, m) for m in METRICS)],
                               required=False, help_text="The metric the A/B test compares.")
    min_improvement = forms.FloatField(required=False, help_text="Percent the winner must beat the other by "
                                                                 "(default 5).")

    target_regions = forms.CharField(
        required=False, label="Regions",
        help_text="Comma separated. With every target field empty the distribution upgrades the devices that run or "
                  "are assigned the model; a target field installs the model on the devices it matches.")
    target_device_types = forms.CharField(required=False, label="Device types",
                                          help_text="Comma separated; empty: all.")
    target_tags = forms.CharField(required=False, label="Tags", help_text="Devices having every tag listed.")
    target_device_ids = forms.CharField(required=False, label="Device ids",
                                        widget=forms.Textarea(attrs={"rows": 2, "cols": 40}),
                                        help_text="Comma, space or line separated.")
    target_min_memory_mb = forms.IntegerField(required=False, min_value=0, label="Minimum memory (MB)")

    max_latency_p99_ms = _criterion("max_latency_p99_ms", "Max p99 latency (ms)",
                                    "Absolute ceiling of the new version's p99 latency, in milliseconds.", "ms")
    max_error_rate = _criterion("max_error_rate", "Max error rate (fraction)",
                                "Highest share of failed inferences, as a fraction from 0 to 1 (0.05 = 5 %).")
    max_latency_increase = _criterion("max_latency_increase", "Max latency increase (%)",
                                      "Largest p99 latency increase over the baseline, in percent.", "%")
    max_accuracy_drop = _criterion("max_accuracy_drop", "Max accuracy drop (%)",
                                   "Largest accuracy drop against the baseline, in percent of the baseline's.", "%")
    min_devices = _criterion("min_devices", "Min devices", "Devices that must report before a verdict.")
    min_inferences = _criterion("min_inferences", "Min inferences",
                                "Inferences that must be reported before a verdict.")
    confidence = _criterion("confidence", "Confidence (fraction)",
                            "Statistical confidence a verdict needs, as a fraction from 0.5 to 0.9999 (0.95 = 95 %).")
    rollback_policy = forms.ChoiceField(choices=RollbackPolicy.choices, initial=RollbackPolicy.AUTOMATIC,
                                        help_text="Automatic: a failing stage rolls every touched device back. "
                                                  "Manual: it pauses for an operator.")
    scheduled_at = forms.DateTimeField(required=False, label="Scheduled start (UTC)",
                                       widget=forms.DateTimeInput(attrs={"type": "datetime-local"},
                                                                  format="%Y-%m-%dT%H:%M"),
                                       input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M",
                                                      "%Y-%m-%d %H:%M:%S"],
                                       help_text="Empty: now.")

    def fieldsets(self) -> list[tuple[str, list[tuple[forms.BoundField, str]]]]:
        """(title, [(field, the strategies it applies to or "")]): the page hides what the chosen strategy ignores."""
        owners: dict[str, list[str]] = {"version_b": ["auto", Strategy.AB_TEST]}
        for strategy, fields in STRATEGY_FIELDS.items():
            for field in fields:
                owners.setdefault(field, []).append(strategy)
        tuned = [name for name in self.fields if name in owners and name != "version_b"]
        groups = [("Version", ["name", "version", "version_b"]), ("Strategy", ["strategy", *tuned]),
                  ("Target devices", list(TARGET_FIELDS)),
                  ("Success criteria and rollback", [*CRITERIA_FIELDS, "rollback_policy"]),
                  ("Schedule", ["scheduled_at"])]
        return [(title, [(self[name], " ".join(owners.get(name, []))) for name in names]) for title, names in groups]

    def clean_stages(self) -> list[dict] | None:
        lines = [line.strip() for line in self.cleaned_data["stages"].splitlines() if line.strip()]
        stages = []
        for number, line in enumerate(lines, 1):
            stage: dict[str, Any] = {}
            for token in line.split():
                if token in ("automatic", "manual"):
                    stage["gate"] = token
                elif token.upper().startswith("P"):
                    stage["soak"] = token.upper()
                else:
                    try:
                        stage["percent"] = _number(float(token.rstrip("%")))
                    except ValueError:
                        raise forms.ValidationError(f"Line {number}: “{token}” is not a percent, an ISO 8601 "
                                                    f"duration or a gate.") from None
            stages.append(stage)
        return stages or None

    def clean_percentages(self) -> list | None:
        try:
            values = [_number(float(item.rstrip("%"))) for item in _names(self.cleaned_data["percentages"])]
        except ValueError:
            raise forms.ValidationError("Numbers separated by commas, e.g. 10, 25, 50, 100.") from None
        return values or None

    def clean(self) -> dict:
        data = super().clean()
        strategy = data.get("strategy") or None
        config: dict[str, Any] = {}
        for field, key in STRATEGY_FIELDS.get(strategy, {}).items():
            value = data.get(field)
            if value in (None, "", []):
                continue
            if field == "regions":
                value = _names(value)
            elif isinstance(value, float):
                value = _number(value)
            elif isinstance(value, str):
                value = value.strip().upper() if field in ("soak", "final_soak", "delay", "window") else value
            config[key] = value
        if "stages" in config:
            config.pop("percentages", None)
        target: dict[str, Any] = {}
        for field, key in TARGET_FIELDS.items():
            value = data.get(field)
            if key == "min_memory_mb":
                if value is not None:
                    target[key] = value
            elif names := _names(value or ""):
                target[key] = names
        # Only what was filled in: the service's defaults apply to the rest.
        criteria = {key: _number(value) if isinstance(value, float) else value
                    for key in CRITERIA_FIELDS if (value := data.get(key)) is not None}
        data["service"] = {
            "name": data.get("name") or "", "version": data.get("version"), "version_b": data.get("version_b"),
            "strategy": strategy, "config": config, "target": target, "success_criteria": criteria,
            "rollback_policy": data.get("rollback_policy") or RollbackPolicy.AUTOMATIC,
            "scheduled_at": data.get("scheduled_at"),
        }
        return data

    def add_service_error(self, exc: ApplicationError) -> None:
        """Shows the service's refusal on the form: each detail on its field, the rest above the form."""
        self.add_error(None, exc.message)
        for detail in exc.details:
            field = self._field_for(detail.get("field", ""))
            if field and field in self.fields:
                self.add_error(field, detail["message"])

    def _field_for(self, path: str) -> str | None:
        head, _, rest = path.partition(".")
        key = re.split(r"[.\[]", rest, maxsplit=1)[0]
        if head == "strategy_config":
            if key == "stages" and not self.data.get("stages", "").strip():
                return "percentages"
            return key or None
        if head == "target":
            return next((field for field, name in TARGET_FIELDS.items() if name == key), None)
        if head == "success_criteria":
            return key if key in CRITERIA_FIELDS else None
        return head if head in ("version", "version_b", "strategy", "rollback_policy", "name") else None


class ActionForm(forms.Form):
    """The confirmation of an operator's action: a reason for the audit trail, a winner for an A/B test."""

    reason = forms.CharField(max_length=500, required=False, widget=forms.TextInput(attrs={"size": 60}),
                             help_text="Optional; recorded in the transition history.")

    def __init__(self, *args, distribution: Distribution, ask_winner: bool = False, with_reason: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if not with_reason:
            del self.fields["reason"]
        if ask_winner:
            versions = ModelVersion.objects.filter(pk__in=[distribution.version_id, distribution.version_b_id])
            self.fields["winner"] = forms.ModelChoiceField(
                queryset=versions.select_related("ai_model"), widget=forms.RadioSelect, empty_label=None,
                help_text="The winner goes to every device of the test; the other version's devices switch to it.")
