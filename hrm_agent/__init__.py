"""hrm-agent: HRM-Agent (Dang & Rawlinson 2025) -- a Hierarchical Reasoning Model trained with
DQN to navigate mazes that change while the agent moves."""

import importlib.util

__version__ = "0.1.0"

# gymnasium ids -> (env class, vector env class) in hrm_agent.envs.gym
GYM_IDS = {"hrm_agent/FourRooms-v0": ("FourRoomsEnv", "FourRoomsVectorEnv"),
           "hrm_agent/Maze-v0": ("MazeEnv", "MazeVectorEnv")}


def register_gym_envs() -> None:
    """Register the ids with gymnasium, by name only: neither torch nor the envs are imported
    until `gymnasium.make` asks for one. Training never needs gymnasium (it is an extra)."""
    import gymnasium

    for env_id, (single, vector) in GYM_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=f"hrm_agent.envs.gym:{single}",
                               vector_entry_point=f"hrm_agent.envs.gym:{vector}")


if importlib.util.find_spec("gymnasium") is not None:
    register_gym_envs()
