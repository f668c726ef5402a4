"""Config strings, the pMNIST config and sweep, and bad configs failing before any work."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import pmnist as pmnist_config
from lnorm.lab import config_args, optimizers, runner
from lnorm.layers import NORM_NAMES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

DEFAULTS = dict(norm='layer', batch_size=128, lr=1e-3, smoke=False, data_dir=None, name='x')


def test_parse_arg_converts_to_the_defaults_types():
  a = config_args.parse_arg('norm=batch, batch_size=4,lr=3e-4,smoke,data_dir=/d,name=y', **DEFAULTS)
  assert (a.norm, a.batch_size, a.lr, a.smoke, a.data_dir, a.name) == (
    'batch',
    4,
    3e-4,
    True,
    '/d',
    'y',
  )
  assert isinstance(a.batch_size, int) and isinstance(a.lr, float)


@pytest.mark.parametrize('arg', [None, '', ' , '])
def test_parse_arg_empty_gives_defaults(arg):
  assert config_args.parse_arg(arg, **DEFAULTS).to_dict() == DEFAULTS


def test_parse_arg_booleans_and_none():
  a = config_args.parse_arg('smoke=false,data_dir=none', **DEFAULTS)
  assert a.smoke is False and a.data_dir is None
  assert config_args.parse_arg('smoke=YES', **DEFAULTS).smoke is True


@pytest.mark.parametrize(
  'arg, match',
  [
    ('nrom=layer', r"unknown config arg 'nrom'; allowed args are: batch_size, data_dir, lr"),
    ('batch_size=abc', r"batch_size='abc': expected an integer"),
    ('batch_size=4.5', r'expected an integer'),
    ('lr=fast', r"lr='fast': expected a number"),
    ('smoke=maybe', r"smoke='maybe': expected a boolean"),
    ('batch_size', r"'batch_size' needs a value"),
    ('norm=layer,norm=batch', r"'norm' is given twice"),
  ],
)
def test_parse_arg_errors_say_what_is_allowed(arg, match):
  with pytest.raises(ValueError, match=match):
    config_args.parse_arg(arg, **DEFAULTS)


def test_parse_arg_refuses_unparsable_types():
  with pytest.raises(ValueError, match=r'use --config.sizes=\.\.\. instead'):
    config_args.parse_arg('sizes=1', sizes=(1, 2))


def test_checks():
  assert config_args.check_choice('norm', 'layer', NORM_NAMES) == 'layer'
  with pytest.raises(ValueError, match=r"norm must be one of 'none', 'layer'.*; got 'lay'"):
    config_args.check_choice('norm', 'lay', NORM_NAMES)
  with pytest.raises(ValueError, match=r'batch_size must be an integer >= 1; got 0'):
    config_args.check_int('batch_size', 0, minimum=1)
  with pytest.raises(ValueError, match=r'must be an integer; got True'):
    config_args.check_int('seed', True)
  with pytest.raises(ValueError, match=r'must be a positive number; got nan'):
    config_args.check_positive('learning_rate', float('nan'))
  assert config_args.check_positive('grad_clip_norm', 0.0, allow_zero=True) == 0.0


def test_pmnist_config_defaults_follow_the_paper():
  c = pmnist_config.get_config()
  assert c.experiment == 'pmnist' and c.norm == 'layer' and c.optimizer == 'adam'
  assert tuple(c.hidden_sizes) == (1000, 1000) and c.batch_size == 128
  assert c.num_valid == 5000 and c.num_train == 0 and c.permute_pixels
  assert c.unbiased_variance is False
  small = pmnist_config.get_config('norm=batch,batch_size=4')
  assert small.unbiased_variance is True and small.steps_per_call > c.steps_per_call


def test_pmnist_smoke_is_small():
  c = pmnist_config.get_config('smoke,batch_size=16')
  assert c.data_source == 'embedded' and c.num_train <= 1024 and max(c.hidden_sizes) <= 64
  assert c.batch_size == 16 and c.num_epochs <= 2


@pytest.mark.parametrize(
  'arg, match',
  [
    ('norm=lyer', r"unknown norm 'lyer'; valid names are: none, layer, batch, weight, rms"),
    ('batch_size=0', r'batch_size must be an integer >= 1; got 0'),
    ('batch_size=-4', r'batch_size must be an integer >= 1'),
    ('lr=0', r'learning_rate must be a positive number; got 0.0'),
    ('lr=-1e-3', r'learning_rate must be a positive number'),
    ('epochs=0', r'num_epochs must be an integer >= 1'),
    ('data=s3', r"data_source must be one of 'tfds', 'idx', 'embedded'; got 's3'"),
    ('norm=layer,bs=4', r"unknown config arg 'bs'; allowed args are: api, batch_size, data"),
  ],
)
def test_pmnist_bad_configs_fail(arg, match):
  with pytest.raises(ValueError, match=match):
    runner.check_config(pmnist_config.get_config(arg))


def test_pmnist_check_config_catches_overrides():
  c = pmnist_config.get_config('smoke')
  c.optimizer = 'adagrad'
  with pytest.raises(ValueError, match=r"optimizer must be one of 'adam', 'adamw'"):
    runner.check_config(c)
  c = pmnist_config.get_config('smoke')
  c.hidden_sizes = (32, 0)
  with pytest.raises(ValueError, match=r'hidden_sizes must be a non-empty tuple of positive'):
    runner.check_config(c)


def test_pmnist_sweep_is_the_papers_grid():
  sweep = pmnist_config.get_sweep()
  assert len(sweep) == 3 * 2 * 3
  assert {d['norm'] for d in sweep} == {'none', 'batch', 'layer'}
  assert {d['batch_size'] for d in sweep} == {128, 4}
  assert {d['seed'] for d in sweep} == {0, 1, 2}
  full = pmnist_config.get_sweep('seeds=1,all_norms,data=embedded,smoke')
  assert len(full) == 5 * 2
  for d in full:  # Every point is a valid config.
    c = pmnist_config.get_config(','.join(f'{k}={v}' for k, v in d.items()))
    runner.check_config(c)
    assert c.norm == d['norm'] and c.data_source == 'embedded'


def test_unknown_experiment_lists_the_known_ones():
  with pytest.raises(
    ValueError, match=r"unknown experiment 'mnist'; known experiments are: .*pmnist"
  ):
    runner.get_experiment_module('mnist')
  assert callable(runner.get_experiment_module('pmnist').make_experiment)


@pytest.mark.parametrize(
  'flags, match',
  [
    (['--config=configs/pmnist.py:norm=bad'], "unknown norm 'bad'"),
    (['--config=configs/pmnist.py:smoke', '--config.batch_size=-1'], 'batch_size must be'),
  ],
)
def test_main_refuses_bad_configs_before_any_work(tmp_path, flags, match):
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', LNORM_JAX_CACHE='off')
  proc = subprocess.run(
    [sys.executable, '-m', 'lnorm.main', f'--workdir={workdir}', *flags],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert match in proc.stderr
  assert not workdir.exists()


def test_optimizer_fields_are_what_the_training_loop_reads():
  import jax.numpy as jnp
  import ml_collections

  fields = config_args.optimizer_fields(3e-4, grad_clip_norm=5.0)
  assert fields['optimizer'] == 'adam' and fields['grad_clip_norm'] == 5.0
  tx, schedule = optimizers.make_optimizer(ml_collections.ConfigDict(fields), num_steps=10)
  assert float(schedule(0)) == pytest.approx(3e-4)
  assert tx.init({'w': jnp.zeros(3)}) is not None
