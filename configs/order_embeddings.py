r"""Order embeddings with a GRU vs LN-GRU caption encoder, paper §6.1 and Table 2.

Run book (from the repository root, with the venv active).

The paper's setting (MSCOCO, not on these machines). Get the captions and the 10-crop
VGG19 features of the order-embeddings code (Karpathy's splits; ``coco.zip`` of
``ivendrov/order-embedding``, 1 GB: ``train.txt``, ``val.txt``, ``test.txt`` with five
pre-tokenized captions per image on consecutive lines, and ``images/10crop/{train,val,
test}.npy``, float32 [N, 4096], rows scaled to unit norm). To compute features yourself,
average VGG19 fc7 over the 10 crops (4 corners + centre, and their mirror images) of each
224x224-resized image, scale each row to unit L2 norm, and save one ``.npy`` per split in
the order of the caption files. The ``{name}_{train,dev,test}_caps.txt`` /
``{name}_{train,dev,test}_ims.npy`` layout of visual-semantic-embedding works too (the
layout is detected; ``layout=order|vse`` forces one). Then::

  python -m lnorm.main --config=configs/order_embeddings.py:data=coco,norm=layer,data_dir=DIR \
      --workdir=runs/order_embeddings/coco-layer
  python -m lnorm.main --config=configs/order_embeddings.py:data=coco,norm=none,data_dir=DIR \
      --workdir=runs/order_embeddings/coco-none

(300-d words, 1024-d GRU, batch 128, up to 100 epochs, dev every 300 updates; the test
metrics, 5 folds of 1,000 images, of the best dev model land in the last row and in
``final.json``; ``method=cosine`` is the symmetric baseline.)

The two real-data runs measured here (CPU scale, ``size=cpu``, the default for them):

  # (a) SICK entailment as an order (text to text; ../shared/data/senteval/SICK):
  for n in none layer; do
    python -m lnorm.main --config=configs/order_embeddings.py:data=sick,norm=$n \
        --workdir=runs/order_embeddings/sick-$n
  done
  # (b) book-passage retrieval stand-in (../shared/data/books; synthetic TF-IDF "images"):
  for n in none layer; do
    python -m lnorm.main --config=configs/order_embeddings.py:data=books,norm=$n \
        --workdir=runs/order_embeddings/books-$n
  done
  python scripts/order_embeddings_report.py --runs runs/order_embeddings \
      --out results/order_embeddings

Re-running a command resumes its workdir; ``steps=N`` may be raised on resume (the
learning rate is constant).

Args (comma-separated after the colon): ``data`` (coco|books|sick, default coco),
``norm`` (none|layer, default layer), ``method`` (order|cosine), ``size`` (paper|cpu;
default paper for coco, cpu for books and sick), ``optimizer`` (order_adam|adam: the
original's Adam variant or standard Adam), ``lr``, ``seed``, ``epochs`` (0: the size's
default), ``steps`` (0: ``epochs`` epochs), ``batch_size``, ``embed``, ``hidden`` (0: the
size's default), ``eval_every`` (updates between dev evaluations; 0: the size's
default), ``max_train`` (training images or pairs; 0: all), ``data_dir``, ``layout``
(auto|order|vse, COCO), ``smoke`` (a tiny run of any data: well under a minute).

Sizes:

* ``paper``: 300-d word embeddings, 1024-d GRU and embedding space, every word of the
  training and dev captions, batch 128, 100 epochs, dev (fold 0 of val) every 300 updates.
* ``cpu`` (books, sick): 64-d word embeddings and a 128-d GRU, so that one run trains
  for several epochs in about 5 minutes on two shared cores (GRU and LN-GRU on both
  tasks, about 25 minutes in all): at 1024-d a step of batch 128 would take seconds here
  and a run could not leave its first epoch. Books: 10,000 words, sentences cut to 40
  ids, dev every 50 updates (1,000 passages), test 2 folds; SICK: all 2,400 words, dev
  (SICK trial) every 25 updates.
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_choice, optimizer_fields, parse_arg

NORMS = ('none', 'layer')
DATASETS = ('coco', 'books', 'sick')
SIZES = ('paper', 'cpu')
#: Held-out books of the stand-in (lnorm.lab.data.book_passages.DEV_BOOKS / TEST_BOOKS).
DEV_BOOKS = ('persuasion', 'chesterton-thursday')
TEST_BOOKS = ('mansfieldpark', 'chesterton-brown', 'shakespeare-hamlet')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one order-embeddings run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    data='coco',
    norm='layer',
    method='order',
    size='',
    optimizer='order_adam',
    lr=1e-3,
    seed=0,
    epochs=0,
    steps=0,
    batch_size=0,
    embed=0,
    hidden=0,
    eval_every=0,
    max_train=0,
    data_dir=None,
    layout='auto',
    smoke=False,
  )
  check_choice('data', a.data, DATASETS)
  check_choice('method', a.method, ('order', 'cosine'))
  size = a.size or ('paper' if a.data == 'coco' else 'cpu')
  check_choice('size', size, SIZES)
  c = ml_collections.ConfigDict()
  c.experiment = 'order_embeddings'
  c.data = a.data
  c.norm = a.norm
  c.method = a.method
  c.seed = a.seed
  c.size = size

  # Data.
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir  # coco: required; books, sick: found at run time when None.
  c.coco_layout = a.layout
  c.coco_cnn = '10crop'
  c.coco_name = 'coco'
  c.feature_dim = 4096
  c.captions_per_image = 5
  c.dev_books = DEV_BOOKS
  c.test_books = TEST_BOOKS
  c.vocab_size = 0  # 0: every word of the training and dev sentences (the original).
  c.max_length = 0  # 0: no cut (the original); else ids per sentence, <eos> included.
  c.bucket_width = 8
  c.max_train = a.max_train

  # Model (the original: 300-d words, 1024-d GRU; order: |l2norm(.)|, margin 0.05).
  c.embed_dim = 300
  c.hidden_dim = 1024
  c.norm_epsilon = 1e-5
  c.init_scale = 0.1
  c.l2_normalize = True
  c.absolute = a.method == 'order'
  c.margin = 0.05 if a.method == 'order' else 0.2

  # Optimization: the original's Adam, lr 1e-3, each gradient tensor clipped to norm 2.
  c.batch_size = 128
  c.num_epochs = a.epochs or 100
  c.num_steps = a.steps
  c.update(optimizer_fields(a.lr))
  c.optimizer = a.optimizer
  c.grad_clip_per_tensor = 2.0

  # Loop and evaluation.
  c.steps_per_call = 1  # Batches change shape with their longest caption.
  c.log_every_steps = 10  # The original's dispFreq.
  c.eval_every_steps = 300  # The original's validFreq.
  c.fold_size = 1000
  c.num_test_folds = 5
  c.eval_batch_size = 256
  c.keep_checkpoints = 2

  if size == 'cpu':
    c.embed_dim = 64
    c.hidden_dim = 128
    if a.data == 'books':
      c.vocab_size = 10000
      c.max_length = 40
      c.eval_every_steps = 50
      c.num_test_folds = 0  # 0: every full fold (2 here).
      c.num_epochs = a.epochs or 12  # 56 updates an epoch.
    elif a.data == 'sick':
      c.eval_every_steps = 25
      c.num_epochs = a.epochs or 30  # 35 updates an epoch.
  if a.data == 'sick':
    # The entailment branch of the order-embeddings code: |h_T| without L2 normalization,
    # margin 0.2, the gradient clipped by its global norm at 2.
    c.l2_normalize = False
    c.margin = 0.2
    c.grad_clip_norm = 2.0
    c.grad_clip_per_tensor = 0.0

  if a.smoke:
    c.embed_dim = 8
    c.hidden_dim = 16
    c.vocab_size = 300
    c.max_length = 16
    c.max_train = a.max_train or 64
    c.batch_size = 8
    c.num_steps = a.steps or 6
    c.eval_every_steps = 3
    c.log_every_steps = 2
    c.fold_size = 10
    c.num_test_folds = 1
    c.eval_batch_size = 16
  c.batch_size = a.batch_size or c.batch_size
  c.embed_dim = a.embed or c.embed_dim
  c.hidden_dim = a.hidden or c.hidden_dim
  c.eval_every_steps = a.eval_every or c.eval_every_steps
  c.checkpoint_every_steps = c.eval_every_steps
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The paper's comparison, GRU vs LN-GRU, as dicts of :func:`get_config` args.

  ``arg``: ``data`` (coco|books|sick, default books), ``steps=N``, ``seeds=N`` (default 1).
  """
  a = parse_arg(arg, data='books', steps=0, seeds=1)
  extra = {'steps': a.steps} if a.steps else {}
  return [
    {'data': a.data, 'norm': norm, 'seed': seed, **extra}
    for norm in NORMS
    for seed in range(a.seeds)
  ]
