"""DQN on a gymnasium environment with a discrete action space, in one readable file.

In the style of CleanRL's single-file agents: the arguments come first, then the network, the
replay buffer and one training loop. Metrics go through ``harness.track`` (charts/* and losses/*).
Deterministic on CPU: one thread, seeded everything, torch deterministic algorithms.
"""

import argparse
import random
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import track


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env-id", default="CartPole-v1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--learning-rate", type=float, default=2.5e-4)
    parser.add_argument("--buffer-size", type=int, default=10_000)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--tau", type=float, default=1.0, help="target network update rate (1.0: hard copy)")
    parser.add_argument("--target-network-frequency", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--start-e", type=float, default=1.0)
    parser.add_argument("--end-e", type=float, default=0.05)
    parser.add_argument("--exploration-fraction", type=float, default=0.5)
    parser.add_argument("--learning-starts", type=int, default=10_000)
    parser.add_argument("--train-frequency", type=int, default=10)
    return parser.parse_args()


class QNetwork(nn.Module):
    def __init__(self, observation_size: int, action_count: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(observation_size, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, action_count),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class ReplayBuffer:
    """A fixed-size ring buffer of transitions in numpy arrays."""

    def __init__(self, size: int, observation_size: int, rng: np.random.Generator):
        self.observations = np.zeros((size, observation_size), dtype=np.float32)
        self.next_observations = np.zeros((size, observation_size), dtype=np.float32)
        self.actions = np.zeros(size, dtype=np.int64)
        self.rewards = np.zeros(size, dtype=np.float32)
        self.dones = np.zeros(size, dtype=np.float32)
        self.size, self.position, self.full, self.rng = size, 0, False, rng

    def add(self, obs, next_obs, action, reward, done) -> None:
        i = self.position
        self.observations[i], self.next_observations[i] = obs, next_obs
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, done
        self.position = (i + 1) % self.size
        self.full = self.full or self.position == 0

    def sample(self, batch_size: int):
        upper = self.size if self.full else self.position
        idx = self.rng.integers(0, upper, size=batch_size)
        return (
            torch.from_numpy(self.observations[idx]), torch.from_numpy(self.actions[idx]),
            torch.from_numpy(self.rewards[idx]), torch.from_numpy(self.next_observations[idx]),
            torch.from_numpy(self.dones[idx]),
        )


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    slope = (end - start) / duration
    return max(slope * t + start, end)


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    env = gym.make(args.env_id)
    assert isinstance(env.action_space, gym.spaces.Discrete), "DQN needs a discrete action space"
    env.action_space.seed(args.seed)
    observation_size = int(np.prod(env.observation_space.shape))

    q_network = QNetwork(observation_size, env.action_space.n)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork(observation_size, env.action_space.n)
    target_network.load_state_dict(q_network.state_dict())
    buffer = ReplayBuffer(args.buffer_size, observation_size, rng)

    obs, _ = env.reset(seed=args.seed)
    episode_return, episode_length, start_time = 0.0, 0, time.time()
    for global_step in range(args.total_timesteps):
        epsilon = linear_schedule(args.start_e, args.end_e, int(args.exploration_fraction * args.total_timesteps), global_step)
        if rng.random() < epsilon:
            action = int(env.action_space.sample())
        else:
            with torch.no_grad():
                action = int(torch.argmax(q_network(torch.as_tensor(obs, dtype=torch.float32))).item())

        next_obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += float(reward)
        episode_length += 1
        buffer.add(obs, next_obs, action, reward, float(terminated))
        obs = next_obs
        if terminated or truncated:
            track.log({"charts/episodic_return": episode_return, "charts/episodic_length": episode_length,
                       "charts/epsilon": epsilon}, step=global_step)
            obs, _ = env.reset()
            episode_return, episode_length = 0.0, 0

        if global_step > args.learning_starts and global_step % args.train_frequency == 0:
            observations, actions, rewards, next_observations, dones = buffer.sample(args.batch_size)
            with torch.no_grad():
                target_max = target_network(next_observations).max(dim=1).values
                td_target = rewards + args.gamma * target_max * (1 - dones)
            old_value = q_network(observations).gather(1, actions.unsqueeze(1)).squeeze(1)
            loss = F.mse_loss(td_target, old_value)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if global_step % 100 == 0:
                track.log({"losses/td_loss": loss.item(), "losses/q_values": old_value.mean().item(),
                           "charts/SPS": int(global_step / (time.time() - start_time))}, step=global_step)
            if global_step % args.target_network_frequency == 0:
                for target_param, param in zip(target_network.parameters(), q_network.parameters()):
                    target_param.data.copy_(args.tau * param.data + (1.0 - args.tau) * target_param.data)
    env.close()
    track.flush()


if __name__ == "__main__":
    main()
