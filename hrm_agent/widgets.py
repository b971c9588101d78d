"""Play one dynamic-door env by hand, or step a trained HRM agent, in a Jupyter widget.

`PlayWidget(env="fourrooms", seed=0, p_change=0.05, checkpoint=None)`; display it (or its
`widget`, a VBox). All logic lives in plain methods (`move`, `reset`, `agent_step`), so the
widget can be driven and tested without a browser. Controls: the N/E/S/W buttons move the
agent (ipywidgets has no key events, so there is no keyboard control); Reset restarts with the
seed in the box; the slider sets the running env's door-redraw probability; with a checkpoint,
"Step agent" lets the agent take one greedy step, shows its Q-values and how z_H, z_L converge
over the segments. A finished episode (goal reached or truncated) blocks further moves until
Reset: the last frame stays on screen and `move` returns False.
"""
from __future__ import annotations

import io
from pathlib import Path

import ipywidgets as W
import numpy as np
import torch

from hrm_agent.envs import ACTION_NAMES, ENVS, make_env
from hrm_agent.envs.render import render_rgb

CELL_PX = 24


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


def check_action(action) -> int:
    if isinstance(action, str) and action.upper() in ACTION_NAMES:
        return ACTION_NAMES.index(action.upper())
    if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < 4:
        raise ValueError(f"invalid action {action!r}: use 0=N 1=E 2=S 3=W (or 'N', 'E', 'S', 'W')")
    return int(action)


class PlayWidget:
    """One env (B=1) with buttons; see the module docstring."""

    def __init__(self, env: str | None = None, seed: int = 0, p_change: float = 0.05,
                 checkpoint: str | Path | None = None):
        self.model = self.config = None
        if checkpoint:  # "" or None: human play only
            path = Path(checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
            from hrm_agent.trainer import load_agent

            self.model, self.config = load_agent(path)
            trained_on = self.config.env.name
            if env not in (None, trained_on):
                raise ValueError(f"checkpoint {str(path)!r} was trained on {trained_on!r}, not {env!r}")
            env = trained_on
        env = env or "fourrooms"
        if env not in ENVS:
            raise ValueError(f"unknown env {env!r}; choose one of {', '.join(ENVS)}")
        self.env_name, self.seed = env, seed
        self._p_change = p_change
        self.env = self._make_env()  # validates seed and p_change

        self.env_box = W.Dropdown(options=list(ENVS), value=env, description="env",
                                  disabled=self.model is not None)
        self.seed_box = W.IntText(value=seed, description="seed")
        self.p_slider = W.FloatSlider(value=p_change, min=0.0, max=1.0, step=0.01, description="p_change")
        self.buttons = {}
        for a, name in enumerate(ACTION_NAMES):
            self.buttons[name] = b = W.Button(description=name, tooltip=f"move {name}",
                                              layout=W.Layout(width="48px"))
            b.add_class(f"hrm-move-{name}")
            b.on_click(lambda _, a=a: self.move(a))
        self.reset_button = W.Button(description="Reset", icon="refresh")
        self.reset_button.add_class("hrm-reset")
        self.reset_button.on_click(lambda _: self.reset())
        self.status = W.HTML()
        self.status.add_class("hrm-status")
        self.image = W.Image(format="png")
        self.image.add_class("hrm-maze")
        self.env_box.observe(lambda c: self._switch_env(c["new"]), names="value")
        self.seed_box.observe(lambda c: self.reset(c["new"]), names="value")
        self.p_slider.observe(lambda c: self._set_p_change(c["new"]), names="value")
        b = self.buttons
        pad = [W.Box(layout=W.Layout(width="48px")) for _ in range(2)]
        arrows = W.VBox([W.HBox([pad[0], b["N"], pad[1]]), W.HBox([b["W"], b["S"], b["E"]])])
        rows = [W.HBox([self.env_box, self.seed_box, self.p_slider]),
                W.HBox([self.image, W.VBox([arrows, self.reset_button])]), self.status]
        if self.model is not None:
            self.mode = W.ToggleButtons(options=["human", "agent"], value="agent", description="mode")
            self.carry_box = W.Checkbox(value=self.config.train.carry_z, description="Carry Z")
            self.agent_button = W.Button(description="Step agent", icon="play")
            self.agent_button.add_class("hrm-agent-step")
            self.agent_button.on_click(lambda _: self.agent_step())
            self.mode.observe(lambda c: self._set_mode(c["new"]), names="value")
            self.q_html = W.HTML("Q: (step the agent)")
            self.q_html.add_class("hrm-q")
            self.plot = W.Image(format="png")
            self.plot.add_class("hrm-convergence")
            rows += [W.HBox([self.mode, self.carry_box, self.agent_button]),
                     W.HBox([self.q_html, self.plot])]
            self._set_mode(self.mode.value)
        self.widget = W.VBox(rows)
        self.q_values: list[float] | None = None
        self.reset(seed)

    # -- logic -------------------------------------------------------------------------------
    def _make_env(self):
        if self.config is not None:
            return self.config.env.make(1, seed=self.seed, p_change=self._p_change)
        return make_env(self.env_name, 1, seed=self.seed, p_change=self._p_change)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; `seed` (default: the seed box) reseeds the env's generator."""
        seed = self.seed_box.value if seed is None else seed
        self.obs = self.env.reset(seed=seed)
        self.seed = seed
        if self.seed_box.value != seed:
            self.seed_box.value = seed  # fires reset(seed) once more: same episode
        self._steps, self._return, self._reward, self._outcome = 0, 0.0, 0.0, "playing"
        self._episode_start = True
        if self.model is not None:
            from hrm_agent.agent import Agent

            self.agent = Agent(self.model, 1, carry_z=self.carry_box.value)
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

    def agent_step(self) -> int | None:
        """One greedy agent step: shows Q(N, E, S, W) and the convergence plot; the action or None."""
        if self.model is None:
            raise RuntimeError("no checkpoint loaded: PlayWidget(checkpoint='path/to/checkpoint.pt')")
        if self.done:
            return None
        self.agent.carry_z = self.carry_box.value
        step = self.agent.act(self.obs, torch.tensor([self._episode_start]), trace=True)
        self._episode_start = False
        self.q_values = [float(v) for v in step.q[0]]
        best = int(step.actions[0])
        self.q_html.value = "Q: " + " · ".join(
            (f"<b>{n} {v:+.3f}</b>" if a == best else f"{n} {v:+.3f}")
            for a, (n, v) in enumerate(zip(ACTION_NAMES, self.q_values)))
        self.plot.value = convergence_png(step.trace[0][:, 0], step.trace[1][:, 0])
        self.move(best)
        return best

    def _switch_env(self, name: str) -> None:
        self.env_name = name
        self.env = self._make_env()
        self.reset()

    def _set_p_change(self, value: float) -> None:
        self._p_change = self.env.p_change = float(value)  # a plain attribute, read every step

    def _set_mode(self, mode: str) -> None:
        for b in self.buttons.values():
            b.disabled = mode == "agent"
        self.agent_button.disabled = mode != "agent"

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
