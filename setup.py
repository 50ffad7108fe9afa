"""birq_fairseq: BiRQ / BEST-RQ self-supervised speech pretraining as a fairseq user module."""

from setuptools import find_packages, setup

setup(
    name="birq_fairseq",
    version="0.1.0",
    description="BiRQ (bi-level self-labeling random quantization) pretraining for fairseq",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["birq_fairseq", "birq_fairseq.*"]),
    package_data={"birq_fairseq": ["config/*.yaml"]},  # birq-fairseq-infer's --config-name infer
    install_requires=[
        # fairseq 0.12.2 cannot import on Python 3.11; fairseq-fixed is upstream main with fixes.
        'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
        'fairseq==0.12.2; python_version < "3.11"',
        "torch==2.14.1",
        "torchaudio==2.11.0",
        "numpy==1.26.4",
        "soundfile==0.14.0",
        "editdistance==0.8.1",
        "flashlight-text==0.0.7",
        "tqdm==4.70.1",
        "matplotlib==3.11.2",
        # common.tensorboard_logdir: fairseq writes event files through it (the viewer, tensorboard, is not needed)
        "tensorboardX==2.6.5",
    ],
    extras_require={
        # hydra's SLURM launcher (examples/pretrain/run_config); the tests compose those configs.
        "cluster": ["hydra-submitit-launcher==1.2.0"],
        "test": ["pytest==9.2.0", "hydra-submitit-launcher==1.2.0",
                 # fairseq's simple_kmeans scripts on dumped features (tests/test_features.py)
                 "scikit-learn==1.9.1", "joblib==1.6.0"],
        # birq-fairseq export --onnx, and running the exported encoder (tests/test_export.py)
        "export": ["onnx==1.23.2", "onnxruntime==1.31.1"],
        # SpeechBrain's BEST-RQ as a reference (examples/reference/speechbrain_bestrq.py). Its YAML
        # loader's pins: hyperpyyaml 1.2.3 wants ruamel.yaml < 0.19. speechbrain's requests,
        # sentencepiece and huggingface_hub are for modules the script does not import.
        "reference": ["speechbrain==1.1.2", "hyperpyyaml==1.2.3", "ruamel.yaml==0.18.16",
                      'ruamel.yaml.clib==0.2.15; platform_python_implementation == "CPython" and '
                      'python_version < "3.14"'],
    },
    entry_points={"console_scripts": [
        "birq-fairseq=birq_fairseq.cli:main",
        # fairseq's examples/speech_recognition/new/infer.py command line (birq_fairseq/infer.py)
        "birq-fairseq-infer=birq_fairseq.infer:cli_main",
    ]},
)
