"""Play one dynamic-door env by hand, or watch a trained agent play it, in a Jupyter widget.

`PlayWidget(env="fourrooms", seed=0, p_change=0.05, checkpoint="default")`; display it (or its
`widget`, a VBox). "default" loads the env's shipped agent, `default_checkpoint(env)`;
a path loads that agent (and fixes the env); None or "" is human play only.

Controls: with the mouse over the board, the arrow keys or W/A/S/D move the agent (ipyevents),
as do the N/E/S/W buttons; Reset restarts with the seed in the box; the slider sets the running
env's door-redraw probability. With an agent: "Step agent" takes one greedy step, ▶ auto-plays
at the chosen speed (a human move, or the end of the episode, pauses it), the bars show its
Q-values, and for a recurrent (HRM) agent the Carry Z box and a plot of how z_H, z_L converge
over the segments. A finished episode (goal reached or truncated) blocks further moves until
Reset: the last frame stays on screen and `move` returns False.

All logic lives in plain methods (`move`, `on_key`, `reset`, `agent_step`, `tick`), so the
widget can be driven and tested without a browser.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import ipywidgets as W
import numpy as np
import torch
from ipyevents import Event

from hrm_agent.envs import ACTION_NAMES, ENVS, make_env
from hrm_agent.envs.grid import ACTION_ARROWS
from hrm_agent.envs.render import LEGEND, render_rgb

CELL_PX = 24
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
# The agent "default" loads: pretrained/<env>-<DEFAULT_AGENT>/agent.pt ("cnn": the CNN baselines).
DEFAULT_AGENT = "carry-z"
KEYS = {"arrowup": 0, "arrowright": 1, "arrowdown": 2, "arrowleft": 3,  # KeyboardEvent.key, lower case
        "w": 0, "d": 1, "s": 2, "a": 3}
MAX_STEPS_PER_SECOND = 10


def default_checkpoint(env: str) -> Path:
    return PRETRAINED_DIR / f"{env}-{DEFAULT_AGENT}" / "agent.pt"


def key_action(key: str) -> int | None:
    """The action of a keyboard key (`KeyboardEvent.key`: arrows, W/A/S/D), None for others."""
    return KEYS.get(key.lower())


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def convergence_png(z_H: torch.Tensor, z_L: torch.Tensor) -> bytes:
    """Log-scale MSE of each segment's last-token state to the final one; traces (n+1, D)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 2.4), dpi=90)
    ax = fig.subplots()
    for name, z in (("z_H", z_H), ("z_L", z_L)):
        mse = ((z[:-1] - z[-1]) ** 2).mean(-1).clamp_min(1e-12).numpy()
        ax.semilogy(range(len(mse)), mse, marker="o", label=name)
    ax.set_xlabel("segment (0 = seed)")
    ax.set_ylabel("MSE to final")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def q_bars_html(q: list[float], best: int) -> str:
    """Q(N, E, S, W) as horizontal bars from a centre line at 0, the greedy action darker."""
    scale = max(abs(v) for v in q) or 1.0
    rows = []
    for a, (name, v) in enumerate(zip(ACTION_NAMES, q)):
        width = 50 * abs(v) / scale  # % of the track; the track's centre is Q = 0
        left = 50 if v >= 0 else 50 - width
        colour = "#0072B2" if a == best else "#A6C8E0"
        weight = "bold" if a == best else "normal"
        rows.append(
            f'<div style="display:flex;align-items:center;gap:6px;font-weight:{weight}">'
            f'<span style="width:32px">{ACTION_ARROWS[a]} {name}</span>'
            f'<span style="position:relative;width:140px;height:12px;background:#f2f2f2;'
            f'border-left:1px solid #ccc;border-right:1px solid #ccc">'
            f'<span style="position:absolute;left:50%;top:0;bottom:0;border-left:1px solid #888"></span>'
            f'<span class="hrm-q-bar" style="position:absolute;left:{left:.1f}%;width:{width:.1f}%;'
            f'top:1px;bottom:1px;background:{colour}"></span></span>'
            f'<span style="font-family:monospace">{name} {v:+.3f}</span></div>')
    return '<div class="hrm-q-chart"><div>Q-values (greedy action bold)</div>' + "".join(rows) + "</div>"


def legend_html(env: str) -> str:
    """Swatches of `env`'s render colours (the tiles `render_rgb` draws) with their meaning."""
    items = [f'<span style="white-space:nowrap"><img style="vertical-align:middle" '
             f'src="data:image/png;base64,{base64.b64encode(png_bytes(_tile(token))).decode()}"> '
             f'{html.escape(label)}</span>' for label, token in LEGEND[env]]
    return '<div class="hrm-legend" style="line-height:1.9">' + "<br>".join(items) + "</div>"


def _tile(token: int) -> np.ndarray:
    return render_rgb(np.array([[token]], np.uint8), cell_px=16)


def check_action(action) -> int:
    if isinstance(action, str) and action.upper() in ACTION_NAMES:
        return ACTION_NAMES.index(action.upper())
    if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < 4:
        raise ValueError(f"invalid action {action!r}: use 0=N 1=E 2=S 3=W (or 'N', 'E', 'S', 'W')")
    return int(action)


class PlayWidget:
    """One env (B=1) with keyboard, buttons and an optional agent; see the module docstring."""

    def __init__(self, env: str | None = None, seed: int = 0, p_change: float = 0.05,
                 checkpoint: str | Path | None = "default"):
        self.model = self.config = self.agent_name = None
        self._default_agent = checkpoint == "default"
        if checkpoint and not self._default_agent:
            self._load_agent(Path(checkpoint))
            trained_on = self.config.env.name
            if env not in (None, trained_on):
                raise ValueError(f"checkpoint {str(checkpoint)!r} was trained on {trained_on!r}, not {env!r}")
            env = trained_on
        env = env or "fourrooms"
        if env not in ENVS:
            raise ValueError(f"unknown env {env!r}; choose one of {', '.join(ENVS)}")
        if self._default_agent:
            self._load_default_agent(env)
        self.env_name, self.seed = env, seed
        self._p_change = p_change
        self.env = self._make_env()  # validates seed and p_change
        self._build(env, seed, p_change)
        self.reset(seed)

    # -- logic -------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; `seed` (default: the seed box) reseeds the env's generator."""
        seed = self.seed_box.value if seed is None else seed
        self.obs = self.env.reset(seed=seed)
        self.seed = seed
        if self.seed_box.value != seed:
            self.seed_box.value = seed  # fires reset(seed) once more: same episode
        self._steps, self._return, self._reward, self._outcome = 0, 0.0, 0.0, "playing"
        self._episode_start = True
        self.q_values = self._trace = None
        self.q_html.value, self.plot.value = "", b""
        self.plot.layout.display = "none"  # until there is a trace to show
        if self.model is not None:
            from hrm_agent.agent import Agent

            self.agent = Agent(self.model, 1, carry_z=self.model.recurrent and self.carry_box.value)
        self._draw(self.obs[0])

    def move(self, action) -> bool:
        """Take one action (0..3 or 'N'/'E'/'S'/'W'); False when the episode is over (press Reset)."""
        action = check_action(action)
        if self.done:
            return False
        obs, reward, terminated, truncated, info = self.env.step(torch.tensor([action]))
        self._steps += 1
        self._reward = float(reward[0])
        self._return = float(info["episode_return"][0])
        self._outcome = "terminated" if terminated[0] else "truncated" if truncated[0] else "playing"
        self.obs = obs  # after a finish this is already the next episode, shown after Reset
        self._draw(info["final_obs"][0])
        return True

    def on_key(self, event: dict) -> bool:
        """A keydown on the board (an ipyevents event): arrows and W/A/S/D move, pausing
        auto-play; other keys are ignored. True when the agent took a step."""
        action = key_action(event.get("key", ""))
        if action is None:
            return False
        self.play.playing = False
        return self.move(action)

    def agent_step(self) -> int | None:
        """One greedy agent step: shows its Q-values (and convergence plot); the action, or None
        when the episode is over."""
        if self.model is None:
            raise RuntimeError("no agent loaded: PlayWidget(checkpoint='default') or "
                               "PlayWidget(checkpoint='../pretrained/fourrooms-carry-z/agent.pt')")
        if self.done:
            return None
        recurrent = self.model.recurrent
        self.agent.carry_z = recurrent and self.carry_box.value
        step = self.agent.act(self.obs, torch.tensor([self._episode_start]), trace=recurrent)
        self._episode_start = False
        self.q_values = [float(v) for v in step.q[0]]
        best = int(step.actions[0])
        self.q_html.value = q_bars_html(self.q_values, best)
        if recurrent:
            self._trace = (step.trace[0][:, 0], step.trace[1][:, 0])
            if not self.play.playing:  # a plot per step would slow auto-play to ~5 steps/s
                self._show_trace()
        self.move(best)
        return best

    def tick(self) -> int | None:
        """One auto-play step (the ▶ timer calls it): the agent acts; a finished episode pauses."""
        action = self.agent_step()
        if self.done:
            self.play.playing = False
        return action

    # -- agents, envs and widgets ------------------------------------------------------------
    def _load_agent(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        from hrm_agent.trainer import load_agent

        self.model, self.config = load_agent(path)
        self.agent_name = path.parent.name if path.name == "agent.pt" else path.name

    def _load_default_agent(self, env: str) -> None:
        """The shipped agent of `env`, or human play only where it is missing (not a checkout)."""
        path = default_checkpoint(env)
        if path.is_file():
            self._load_agent(path)
        else:
            self.model = self.config = self.agent_name = None

    def _make_env(self):
        if self.config is not None:
            return self.config.env.make(1, seed=self.seed, p_change=self._p_change)
        return make_env(self.env_name, 1, seed=self.seed, p_change=self._p_change)

    def _switch_env(self, name: str) -> None:
        self.play.playing = False
        self.env_name = name
        if self._default_agent:
            self._load_default_agent(name)
            self._show_agent_controls()
        self.env = self._make_env()
        self.legend.value = legend_html(name)
        self.reset()

    def _set_p_change(self, value: float) -> None:
        self._p_change = self.env.p_change = float(value)  # holds from the next step

    def _human_move(self, action: int) -> None:
        self.play.playing = False
        self.move(action)

    def _on_play_value(self, change) -> None:
        if change["new"] > change["old"]:  # ■ (stop) rewinds the counter: no step
            self.tick()

    def _on_playing(self, change) -> None:
        if not change["new"] and self._trace is not None:
            self._show_trace()

    def _show_trace(self) -> None:
        self.plot.value = convergence_png(*self._trace)
        self.plot.layout.display = None

    def _show_agent_controls(self) -> None:
        self.agent_box.layout.display = "none" if self.model is None else None
        if self.model is not None:
            name = html.escape(self.agent_name)
            self.agent_label.value = f'<span style="white-space:nowrap">agent <b>{name}</b></span>'
            self.carry_box.layout.display = None if self.model.recurrent else "none"
            if self.model.recurrent:
                self.carry_box.value = self.config.train.carry_z

    def _build(self, env: str, seed: int, p_change: float) -> None:
        self.env_box = W.Dropdown(options=list(ENVS), value=env, description="env",
                                  disabled=self.model is not None and not self._default_agent)
        self.seed_box = W.IntText(value=seed, description="seed")
        self.p_slider = W.FloatSlider(value=p_change, min=0.0, max=1.0, step=0.01, description="p_change")
        self.buttons = {}
        for a, name in enumerate(ACTION_NAMES):
            self.buttons[name] = b = W.Button(description=name, tooltip=f"move {name}",
                                              layout=W.Layout(width="48px"))
            b.add_class(f"hrm-move-{name}")
            b.on_click(lambda _, a=a: self._human_move(a))
        self.reset_button = W.Button(description="Reset", icon="refresh")
        self.reset_button.add_class("hrm-reset")
        self.reset_button.on_click(lambda _: self.reset())
        self.status = W.HTML()
        self.status.add_class("hrm-status")
        self.image = W.Image(format="png")
        self.image.add_class("hrm-maze")
        self.key_events = Event(source=self.image, watched_events=["keydown"], prevent_default_action=True)
        self.key_events.on_dom_event(self.on_key)
        self.legend = W.HTML(legend_html(env))
        self.env_box.observe(lambda c: self._switch_env(c["new"]), names="value")
        self.seed_box.observe(lambda c: self.reset(c["new"]), names="value")
        self.p_slider.observe(lambda c: self._set_p_change(c["new"]), names="value")

        self.agent_label = W.HTML()
        self.agent_button = W.Button(description="Step agent", icon="step-forward")
        self.agent_button.add_class("hrm-agent-step")
        self.agent_button.on_click(lambda _: self.agent_step())
        self.speed = W.IntSlider(value=4, min=1, max=MAX_STEPS_PER_SECOND, description="steps/s")
        self.play = W.Play(min=0, max=10**9, interval=250, show_repeat=False, tooltip="auto-play the agent")
        self.play.add_class("hrm-play")
        W.dlink((self.speed, "value"), (self.play, "interval"), transform=lambda v: 1000 // v)
        self.play.observe(self._on_play_value, names="value")
        self.play.observe(self._on_playing, names="playing")
        self.carry_box = W.Checkbox(value=True, description="Carry Z", indent=False)
        self.q_html = W.HTML(layout=W.Layout(margin="0 16px 0 0"))
        self.q_html.add_class("hrm-q")
        self.plot = W.Image(format="png")
        self.plot.add_class("hrm-convergence")
        self.agent_box = W.VBox([
            W.HBox([self.agent_label, self.agent_button, self.play, self.speed, self.carry_box],
                   layout=W.Layout(align_items="center")),
            W.HBox([self.q_html, self.plot])])

        b = self.buttons
        pad = [W.Box(layout=W.Layout(width="48px")) for _ in range(2)]
        arrows = W.VBox([W.HBox([pad[0], b["N"], pad[1]]), W.HBox([b["W"], b["S"], b["E"]])])
        hint = W.HTML("<small>keys: hover the board,<br>then arrows or W/A/S/D</small>")
        self.widget = W.VBox([W.HBox([self.env_box, self.seed_box, self.p_slider]),
                              W.HBox([self.image, W.VBox([arrows, self.reset_button, hint, self.legend])]),
                              self.status, self.agent_box])
        self._show_agent_controls()

    def _draw(self, grid) -> None:
        self.image.value = png_bytes(render_rgb(grid, self.env, cell_px=CELL_PX))
        outcome = {"terminated": "terminated (goal reached) · press Reset",
                   "truncated": "truncated (step limit) · press Reset"}.get(self._outcome, "playing")
        self.status.value = (f"step {self._steps} · reward {self._reward:+.2f} · "
                             f"return {self._return:+.2f} · {outcome}")

    # -- read-only state ---------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        return self._steps

    @property
    def done(self) -> bool:
        return self._outcome != "playing"

    @property
    def last_reward(self) -> float:
        return self._reward

    @property
    def episode_return(self) -> float:
        return self._return

    @property
    def image_bytes(self) -> bytes:
        return bytes(self.image.value)

    @property
    def agent_position(self) -> tuple[int, int]:
        return divmod(int(self.env.agent[0]), self.env.width)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
