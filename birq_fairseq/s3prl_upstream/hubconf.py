"""s3prl / torch.hub entries for BiRQ checkpoints (``hubconf.py`` of an s3prl upstream).

s3prl builds an upstream as ``getattr(s3prl.hub, name)(ckpt=..., refresh=..., **extra_conf)``
(``S3PRLUpstream``) or ``Upstream(ckpt=..., model_config=..., refresh=...)``
(``run_downstream.py``). Register the entries and use ``-u birq -k CKPT``:

    import s3prl.hub
    from birq_fairseq.s3prl_upstream import hubconf
    s3prl.hub.birq = hubconf.birq
    s3prl.hub.birq_local = hubconf.birq_local

``python -m birq_fairseq.s3prl_upstream.run_downstream`` does this and runs s3prl's
``run_downstream.py`` with the same arguments.
"""

from .expert import UpstreamExpert as _UpstreamExpert


def birq(ckpt: str = None, *args, **kwargs):
    """A BiRQ checkpoint (pretraining or finetuned), or ckpt="fbank", as an s3prl upstream."""
    return _UpstreamExpert(ckpt, *args, **kwargs)


def birq_local(ckpt: str = None, *args, **kwargs):
    """The same, under s3prl's name for upstreams read from a local path (``-u birq_local -k PATH``)."""
    return birq(ckpt, *args, **kwargs)
