"""The ``%azpar config`` form: edit a profile with a message next to each field, save it
to the file the configuration layer reads, test the connection, create, resize or delete
the pool.

Why it is built from ``config.PROFILE_FIELDS``: a field the backend adds appears here
without touching this module. Why secrets cannot leak through it: secret fields hold the
name of an environment variable, the form only asks whether that variable is set, and a
value typed into such a field that looks like a key instead of a name is dropped at once,
so widget state (which JupyterLab may save into the notebook) never keeps one. Why the
actions run on a thread: connection tests and pool operations take seconds to minutes on
Azure, and the kernel must stay free meanwhile (its messages are what update the form).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from .. import config
from . import profile as prof
from .state import STYLE_COLOURS

TestConnection = Callable[[str], str]
PoolAction = Callable[..., str]  # (profile_name, action, dedicated=None, spot=None) -> str

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Accounts",
        (
            "backend",
            "batch_account_url",
            "storage_account_url",
            "auth",
            "managed_identity_client_id",
            "batch_key_env",
            "storage_key_env",
        ),
    ),
    (
        "Pool",
        (
            "pool_id",
            "create_pool",
            "vm_size",
            "dedicated_nodes",
            "spot_nodes",
            "autoscale",
            "min_nodes",
            "max_nodes",
            "task_slots_per_node",
        ),
    ),
    (
        "Nodes",
        (
            "image",
            "node_agent_sku",
            "container_image",
            "packages",
            "pip_options",
            "start_commands",
            "subnet_id",
            "registry_server",
            "registry_username",
            "registry_password_env",
        ),
    ),
    ("Client", ("poll_interval",)),
)
CHOICES: dict[str, tuple[str, ...]] = {"backend": ("azure", "local"), "auth": config.AUTH_MODES}
DELETE_CONFIRM_SECONDS = 10.0
_LABEL_WIDTH = "190px"
_ROW = widgets.Layout(width="560px")


def _message(text: str, style: str = "danger") -> str:
    return f'<span style="color:{STYLE_COLOURS[style]}">{escape(text)}</span>' if text else ""


class ConfigForm:
    """A form for one profile; ``widget`` is what the notebook shows."""

    def __init__(
        self,
        name: str | None = None,
        *,
        path: Path | None = None,
        test_connection: TestConnection | None = None,
        pool_action: PoolAction | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: str | None = None,
        threaded: bool = True,
    ):
        self.path = Path(path or config.user_config_path())
        self.test_connection_fn, self.pool_action_fn = test_connection, pool_action
        self.environ, self.cwd, self.threaded = environ, cwd, threaded
        self.loaded: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.saved_values: dict[str, Any] | None = None
        self._worker: threading.Thread | None = None
        self._delete_armed_at: float | None = None
        self._loading = False

        style = {"description_width": _LABEL_WIDTH}
        known = self._known_names()
        self.name = widgets.Combobox(
            value=name or (known[0] if known else "default"),
            options=known,
            description="profile",
            ensure_option=False,
            style=style,
            layout=_ROW,
        )
        self.name_message = widgets.HTML()
        self.inputs: dict[str, widgets.Widget] = {}
        self.messages: dict[str, widgets.HTML] = {}
        self.notes: dict[str, widgets.HTML] = {}
        rows: list[widgets.Widget] = [
            widgets.HTML(f"<b>azpar profile</b> · saved to <code>{escape(str(self.path))}</code>"),
            self._row("name", self.name, self.name_message),
        ]
        placed = {f for _, fields in SECTIONS for f in fields}
        sections = list(SECTIONS) + [("Other", tuple(f for f in config.PROFILE_FIELDS if f not in placed))]
        for title, fields in sections:
            present = [f for f in fields if f in config.PROFILE_FIELDS]
            if present:
                rows.append(widgets.HTML(f"<b>{title}</b>"))
                rows.extend(self._field_row(config.PROFILE_FIELDS[f], style) for f in present)

        self.save_button = widgets.Button(description="Save", button_style="primary", icon="save")
        self.test_button = widgets.Button(description="Test connection", icon="plug")
        self.dedicated = widgets.BoundedIntText(
            description="dedicated", min=0, max=100_000, layout=widgets.Layout(width="170px")
        )
        self.spot = widgets.BoundedIntText(description="spot", min=0, max=100_000, layout=widgets.Layout(width="170px"))
        self.pool_buttons = {
            action: widgets.Button(
                description=action.capitalize() + (" pool" if action != "status" else ""),
                tooltip=f"{action} the pool of this (saved) profile",
            )
            for action in ("create", "resize", "delete", "status")
        }
        self.pool_buttons["status"].description = "Pool status"
        self.status = widgets.HTML()
        self.status.add_class("azpar-form-status")
        self.save_button.on_click(lambda _b: self.save())
        self.test_button.on_click(lambda _b: self.test())
        for action, button in self.pool_buttons.items():
            button.on_click(lambda _b, a=action: self.pool(a))
        pool_buttons = ((b, pool_action) for b in self.pool_buttons.values())
        for button, fn in ((self.test_button, test_connection), *pool_buttons):
            if fn is None:
                button.tooltip = "not available in this version of azpar_magic"
        rows += [
            widgets.HBox([self.save_button, self.test_button]),
            widgets.HTML("<b>Pool</b> of the saved profile: Create uses its node counts, Resize the counts here"),
            widgets.HBox([self.dedicated, self.spot, *self.pool_buttons.values()]),
            self.status,
        ]
        self.widget = widgets.VBox(rows)
        self.widget.add_class("azpar-config-form")
        self.name.observe(self._on_name, names="value")
        self.load(self.name.value)

    # ------------------------------------------------------------------ building

    def _known_names(self) -> list[str]:
        try:
            return config.profile_names(cwd=self.cwd)
        except config.ConfigError:
            return []

    def _row(
        self, field: str, control: widgets.Widget, message: widgets.HTML, note: widgets.HTML | None = None
    ) -> widgets.HBox:
        row = widgets.HBox(
            [control, message] + ([note] if note is not None else []), layout=widgets.Layout(align_items="center")
        )
        row.add_class(f"azpar-field-{field}")
        message.add_class("azpar-field-message")
        return row

    def _field_row(self, spec: config.ProfileField, style: dict) -> widgets.HBox:
        common = {"description": spec.name, "style": style, "layout": _ROW, "tooltip": spec.help}
        if spec.kind is bool:
            control = widgets.Checkbox(indent=True, **common)
        elif spec.kind is int:
            control = widgets.IntText(**common)
        elif spec.kind is float:
            control = widgets.FloatText(**common)
        elif spec.kind is list:
            control = widgets.Textarea(placeholder="one per line", rows=2, **common)
        elif spec.name in CHOICES:
            control = widgets.Dropdown(options=list(CHOICES[spec.name]), **common)
        else:
            # Secret fields sync on blur/enter only, so a pasted key is not sent keystroke by keystroke.
            control = widgets.Text(placeholder=spec.help, continuous_update=not spec.secret, **common)
        self.inputs[spec.name] = control
        self.messages[spec.name] = widgets.HTML()
        note = None
        if spec.secret:
            note = self.notes[spec.name] = widgets.HTML()
        control.observe(lambda change, f=spec.name: self._on_change(f, change), names="value")
        return self._row(spec.name, control, self.messages[spec.name], note)

    # ------------------------------------------------------------------ values

    def _set(self, field: str, value: Any) -> None:
        control = self.inputs[field]
        if isinstance(control, widgets.Textarea):
            value = "\n".join(value or [])
        elif isinstance(control, widgets.Dropdown) and value not in control.options:
            control.options = [*control.options, value]  # an odd value from a file: shown, then flagged
        elif isinstance(control, widgets.Text) and value is None:
            value = ""
        control.value = value

    def values(self) -> dict[str, Any]:
        """The profile as typed, with each field's type."""
        out: dict[str, Any] = {}
        for field, control in self.inputs.items():
            value = control.value
            if isinstance(control, widgets.Textarea):
                value = [line.strip() for line in value.splitlines() if line.strip()]
            elif isinstance(value, str):
                value = value.strip()
            out[field] = value
        return out

    def load(self, name: str) -> None:
        """Show profile ``name`` as the configuration layer reads it (defaults if new)."""
        values, sources, problem = prof.load(name, cwd=self.cwd, environ=self.environ)
        self._loading = True
        hidden = []  # secret fields whose saved value looks like the secret itself: never put in widget state
        try:
            for field, value in values.items():
                if field in self.inputs:
                    if config.PROFILE_FIELDS[field].secret and prof.shown_secret_name(value) != str(value or ""):
                        hidden.append(field)
                        value = ""
                    self._set(field, value)
        finally:
            self._loading = False
        self.loaded, self.sources = dict(values), dict(sources)
        self.saved_values = dict(values) if name in self._known_names() else None
        locks = prof.locked(name)
        for field, control in self.inputs.items():
            source = prof.source_text(sources.get(field, "defaults"), locks.get(field))
            control.tooltip = f"{config.PROFILE_FIELDS[field].help} (now from {source})"
            control.disabled = field in locks  # the administrator's value: shown, not editable
        self.dedicated.value = int(values.get("dedicated_nodes") or 0)
        self.spot.value = int(values.get("spot_nodes") or 0)
        self.validate()
        for field in hidden:
            self.messages[field].value = _message(
                f"the saved value is not a variable name (it may be the secret, so it is not shown); this field "
                f"takes the NAME of the environment variable that holds it (from {sources.get(field, 'defaults')})"
            )
        if problem:
            self._say(problem, "danger")
        elif self.saved_values is None:
            self._say(f"new profile {name!r}: defaults shown; Save writes it to {self.path}", "info")
        else:
            self._say(f"profile {name!r} loaded", "info")

    def validate(self) -> dict[str, str]:
        """Refresh the message next to every field; return field -> problem."""
        problems = config.validate_profile(self.values())
        for field, message in self.messages.items():
            message.value = _message(problems.get(field, ""))
        for field, note in self.notes.items():
            note.value = _message(prof.secret_status(self.inputs[field].value.strip(), self.environ), "info")
        name = self.name.value.strip()
        self.name_message.value = _message(
            "" if prof.valid_name(name) else "a profile name is letters, digits, '-' or '_'"
        )
        return problems

    def _on_change(self, field: str, change: dict) -> None:
        if self._loading:
            return
        spec = config.PROFILE_FIELDS[field]
        if spec.secret and isinstance(change["new"], str) and prof.looks_like_secret(change["new"].strip()):
            old = change["old"] if isinstance(change["old"], str) and not prof.looks_like_secret(change["old"]) else ""
            self.inputs[field].value = old
            self.validate()
            self.messages[field].value = _message(
                "that looked like a secret and was dropped: this field takes the NAME of the environment "
                "variable that holds it"
            )
            return
        self.validate()

    def _on_name(self, change: dict) -> None:
        name = (change["new"] or "").strip()
        if name and name in self._known_names():
            self.load(name)
        else:
            self.validate()

    @property
    def dirty(self) -> bool:
        """Whether the form differs from the saved profile (or nothing is saved yet)."""
        return self.saved_values is None or self.values() != self.saved_values

    # ------------------------------------------------------------------ actions

    def _say(self, text: str, style: str) -> None:
        self.status.value = (
            f'<span class="azpar-form-message" data-style="{style}" '
            f'style="color:{STYLE_COLOURS[style]}">{escape(text)}</span>'
        )

    def save(self) -> Path | None:
        """Validate and write the profile; the status line says what happened."""
        self._delete_armed_at = None
        name = self.name.value.strip()
        problems = self.validate()
        if not prof.valid_name(name):
            self._say("not saved: the profile name is letters, digits, '-' or '_'", "danger")
            return None
        if problems:
            self._say(f"not saved: {len(problems)} field(s) need attention: {', '.join(problems)}", "danger")
            return None
        values = self.values()
        try:
            path = config.save_profile(name, prof.to_save(values, self.loaded, self.sources, self.path), self.path)
        except (config.ConfigError, OSError) as exc:
            self._say(f"not saved: {exc}", "danger")
            return None
        self.name.options = self._known_names()
        self.load(name)
        self._say(f"saved profile {name!r} to {path}", "success")
        return path

    def _run(self, label: str, call: Callable[[], str], note: str = "") -> None:
        if self._worker is not None and self._worker.is_alive():
            self._say(f"still busy with the previous action; {label} not started", "warning")
            return
        buttons = [self.save_button, self.test_button, *self.pool_buttons.values()]

        def work() -> None:
            for b in buttons:
                b.disabled = True
            self._say(f"{label}…", "info")
            try:
                result = call()
            except Exception as exc:
                self._say(f"{label} failed: {exc}", "danger")
            else:
                self._say(f"{label}: {result}{note}", "success")
            finally:
                for b in buttons:
                    b.disabled = False

        if self.threaded:
            self._worker = threading.Thread(target=work, name="azpar-config-action", daemon=True)
            self._worker.start()
        else:
            work()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running action (tests, scripts)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def _saved_name(self, what: str) -> str | None:
        name = self.name.value.strip()
        if name not in self._known_names():
            self._say(f"save profile {name!r} first: {what} uses the saved profile", "warning")
            return None
        return name

    def _unsaved_note(self) -> str:
        return " (the saved profile was used; this form has unsaved changes)" if self.dirty else ""

    def test(self) -> None:
        self._delete_armed_at = None
        if self.test_connection_fn is None:
            self._say("test connection is not available in this version of azpar_magic", "warning")
            return
        name = self._saved_name("the test")
        if name is not None:
            fn = self.test_connection_fn
            self._run(f"connection test of {name!r}", lambda: fn(name), self._unsaved_note())

    def pool(self, action: str) -> None:
        """create, resize, delete (asks for a second click) or status of the pool."""
        if self.pool_action_fn is None:
            self._say(f"pool {action} is not available in this version of azpar_magic", "warning")
            return
        name = self._saved_name(f"pool {action}")
        if name is None:
            return
        delete = self.pool_buttons["delete"]
        if action == "delete":
            armed = self._delete_armed_at
            if armed is None or time.monotonic() - armed > DELETE_CONFIRM_SECONDS:
                self._delete_armed_at = time.monotonic()
                delete.description, delete.button_style = "Confirm delete", "danger"
                self._say(
                    f"click Confirm delete within {DELETE_CONFIRM_SECONDS:.0f} s to delete the pool of "
                    f"{name!r} (running tasks are lost)",
                    "warning",
                )
                return
        self._delete_armed_at = None
        delete.description, delete.button_style = "Delete pool", ""
        fn = self.pool_action_fn
        if action == "resize":
            dedicated, spot = int(self.dedicated.value), int(self.spot.value)
            self._run(
                f"pool resize to {dedicated} dedicated, {spot} spot",
                lambda: fn(name, action, dedicated=dedicated, spot=spot),
                self._unsaved_note(),
            )
        else:
            self._run(f"pool {action}", lambda: fn(name, action), self._unsaved_note())

    def descendants(self) -> list[widgets.Widget]:
        """Every widget of the form (tests check none holds a secret)."""
        found, todo = [], [self.widget]
        while todo:
            w = todo.pop()
            found.append(w)
            todo.extend(getattr(w, "children", ()))
            layout = getattr(w, "layout", None)
            if isinstance(layout, widgets.Widget):
                found.append(layout)
        return found
