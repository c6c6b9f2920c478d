"""An audio encoder: a log-mel spectrogram front end, then the ResNet-style CNN.

The front end has no trainable parameters (its window and filterbank are buffers):

1. short-time Fourier transform (``torch.stft``, periodic Hann window of ``n_fft`` samples,
   ``hop`` samples apart, frames centred with zero padding) and the power spectrum ``|X|²``;
2. a bank of ``n_mels`` triangular filters equally spaced on the mel scale between ``f_min``
   and ``f_max`` (Davis & Mermelstein, "Comparison of Parametric Representations for
   Monosyllabic Word Recognition in Continuously Spoken Sentences", IEEE TASSP 28(4), 1980),
   with the HTK mel scale ``mel(f) = 2595 log10(1 + f / 700)`` (Young et al., *The HTK Book*,
   section "Filterbank Analysis"); each triangle rises from 0 at the previous filter's centre to
   1 at its own and falls back to 0 at the next one's, evaluated at every FFT bin's frequency
   (peak-normalised as in HTK, not area-normalised as in Slaney's Auditory Toolbox);
3. ``log(mel + eps)``, and optionally a per-utterance mean/variance normalisation.

During training, SpecAugment-style masking (Park, Chan, Zhang, Chiu, Zoph, Cubuk & Le,
"SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition",
Interspeech 2019) can replace random bands of mel channels and of frames by the utterance's
mean (time warping, the paper's third policy, is left out: the paper found it the least useful).

The ``[1, n_mels, frames]`` log-mel image goes through :class:`CNNBackbone`; the encoder returns
its feature maps (``spatial = True``), so utterance-level heads average them over frequency and
time.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.cnn import CNNBackbone, CNNParams
from polytask.models.encoders import ENCODERS, Encoder


def hz_to_mel(hz: Tensor) -> Tensor:
    """The HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Triangular mel filters as a ``[n_mels, n_fft // 2 + 1]`` float32 matrix.

    Filter ``m`` has its corners at ``n_mels + 2`` frequencies equally spaced in mel from
    ``f_min`` to ``f_max``: it is 0 below corner ``m`` and above corner ``m + 2`` and 1 at corner
    ``m + 1``, linear in Hz in between. Computed in float64 for exact corners, on the CPU
    even where the model is built on the ``meta`` device (to check a model file's shapes
    without allocating): the filters are checked by value when they are built.
    """
    cpu = torch.device("cpu")
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=cpu) * sample_rate / n_fft
    lo, hi = (
        hz_to_mel(torch.tensor(f_min, dtype=torch.float64, device=cpu)),
        hz_to_mel(torch.tensor(f_max, dtype=torch.float64, device=cpu)),
    )
    corners = mel_to_hz(
        torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64, device=cpu)
    )
    left, center, right = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (bins[None, :] - left) / (center - left)
    falling = (right - bins[None, :]) / (right - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


Normalize = Literal["none", "utterance", "band"]


class LogMel(nn.Module):
    """Waveforms ``[B, T]`` -> log-mel spectrograms ``[B, n_mels, frames]`` (no parameters)."""

    window: Tensor
    filterbank: Tensor

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop: int,
        n_mels: int,
        f_min: float = 0.0,
        f_max: float | None = None,
        eps: float = 1e-6,
        normalize: Normalize = "utterance",
    ) -> None:
        super().__init__()
        nyquist = sample_rate / 2
        top = nyquist if f_max is None else f_max
        if not 0 <= f_min < top <= nyquist:
            raise ConfigError(
                f"config error: model.encoder: need 0 <= f_min < f_max <= {nyquist:g} Hz (half "
                f"the sample rate {sample_rate} Hz), got f_min={f_min:g}, f_max={top:g}"
            )
        bank = mel_filterbank(n_fft, sample_rate, n_mels, f_min, top)
        empty = (bank.sum(dim=1) == 0).nonzero().flatten()
        if len(empty):
            # Narrow low-frequency filters can fall between two FFT bins and see nothing.
            raise ConfigError(
                f"config error: model.encoder: mel filter {int(empty[0])} of {n_mels} covers no "
                f"FFT bin (bins are {sample_rate / n_fft:g} Hz apart); raise n_fft or lower n_mels"
            )
        self.n_fft, self.hop, self.eps, self.normalize = n_fft, hop, eps, normalize
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True))
        self.register_buffer("filterbank", bank)

    def frames(self, samples: int) -> int:
        """Frames of a ``samples``-long waveform (centred frames: one every ``hop``)."""
        return samples // self.hop + 1

    def forward(self, wave: Tensor) -> Tensor:
        spec = torch.stft(
            wave,
            self.n_fft,
            hop_length=self.hop,
            win_length=self.n_fft,
            window=self.window,
            center=True,
            # Zero padding: recordings are already zero-padded to one length, and reflection
            # would fail on clips shorter than half a window.
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        x = torch.log(torch.einsum("mf,bft->bmt", self.filterbank, power) + self.eps)
        if self.normalize == "utterance":
            # One mean and scale per recording: removes the gain, keeps the spectral envelope
            # (which tells speakers apart).
            mean = x.mean(dim=(1, 2), keepdim=True)
            std = x.std(dim=(1, 2), keepdim=True)
            x = (x - mean) / (std + 1e-5)
        elif self.normalize == "band":
            # Cepstral-mean-and-variance style, per mel band over time: also removes the
            # channel's (and the speaker's) average spectrum.
            mean = x.mean(dim=2, keepdim=True)
            std = x.std(dim=2, keepdim=True)
            x = (x - mean) / (std + 1e-5)
        return x


def spec_augment(x: Tensor, masks: int, width: int, dim: int) -> Tensor:
    """``masks`` bands of up to ``width`` consecutive rows (``dim`` 1: mel channels) or columns
    (``dim`` 2: frames) of each ``[B, M, T]`` spectrogram set to its mean (Park et al. 2019:
    width ``w ~ U[0, width]``, start ``~ U[0, size - w]``; drawn per example)."""
    if masks <= 0 or width <= 0:
        return x
    batch, size = x.shape[0], x.shape[dim]
    w = torch.randint(0, min(width, size) + 1, (batch, masks), device=x.device)
    start = (torch.rand(batch, masks, device=x.device) * (size - w + 1)).long()
    pos = torch.arange(size, device=x.device)
    hit = ((pos >= start[..., None]) & (pos < (start + w)[..., None])).any(dim=1)  # [B, size]
    hit = hit[:, :, None] if dim == 1 else hit[:, None, :]
    fill = x.mean(dim=(1, 2), keepdim=True)
    return torch.where(hit, fill, x)


class AudioCNNParams(CNNParams):
    """Parameters of the audio CNN encoder: the log-mel front end (sizes in samples) and the
    CNN (``widths``, ``blocks``, ``dropout`` as for the image CNN). The defaults suit speech at
    8 kHz: a 32 ms window every 16 ms, 40 mel bands up to the Nyquist frequency."""

    widths: list[int] = Field(
        default=[16, 32, 64], min_length=1, description="channels of each CNN stage"
    )
    n_fft: int = Field(default=256, ge=8, description="STFT window and FFT size (samples)")
    hop: int = Field(default=128, ge=1, description="samples between frames")
    n_mels: int = Field(default=40, ge=1, description="mel bands")
    f_min: float = Field(default=0.0, ge=0.0, description="lowest mel filter edge (Hz)")
    f_max: float | None = Field(
        default=None, gt=0.0, description="highest mel filter edge (Hz); default: Nyquist"
    )
    log_eps: float = Field(default=1e-6, gt=0.0, description="log(mel + log_eps)")
    normalize: Normalize = Field(
        default="utterance",
        description="'utterance': one mean/std per recording; 'band': per mel band; 'none'",
    )
    freq_masks: int = Field(default=0, ge=0, description="SpecAugment: mel-band masks (train)")
    freq_mask_width: int = Field(default=8, ge=0, description="SpecAugment: F, widest band")
    time_masks: int = Field(default=0, ge=0, description="SpecAugment: frame masks (train)")
    time_mask_width: int = Field(default=10, ge=0, description="SpecAugment: T, widest mask")
    fold_frequency: bool = Field(
        default=True,
        description="return [B, C x bands, 1, frames] maps (frequency folded into channels) so "
        "that pooling heads average over time only",
    )


class AudioCNNEncoder(Encoder):
    """:class:`LogMel` over ``inputs["audio"]`` (``[B, T]``), then :class:`CNNBackbone` on the
    ``[B, 1, n_mels, frames]`` image; returns its feature maps."""

    spatial = True

    def __init__(self, spec: InputSpec, params: AudioCNNParams) -> None:
        super().__init__()
        spec.require("audio", "audio_cnn")
        if spec.sample_rate <= 0:
            raise ConfigError("config error: model.encoder: the audio input has no sample rate")
        self.frontend = LogMel(
            spec.sample_rate,
            params.n_fft,
            params.hop,
            params.n_mels,
            params.f_min,
            params.f_max,
            params.log_eps,
            params.normalize,
        )
        self.params = params
        self.backbone = CNNBackbone(1, CNNParams.model_validate(params.model_dump(include=_CNN)))
        # Height of the last feature map: the stem keeps the n_mels rows, every later stage
        # halves them (3x3 convolutions, padding 1, stride 2: ceil(h / 2)).
        bands = params.n_mels
        for _ in params.widths[1:]:
            bands = (bands + 1) // 2
        self.bands = bands
        self.out_dim = self.backbone.out_dim * (bands if params.fold_frequency else 1)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        x = self.frontend(inputs["audio"])
        if self.training:
            p = self.params
            x = spec_augment(x, p.freq_masks, p.freq_mask_width, dim=1)
            x = spec_augment(x, p.time_masks, p.time_mask_width, dim=2)
        out: Tensor = self.backbone(x[:, None])
        if self.params.fold_frequency:
            # A CNN is (nearly) equivariant to shifts along frequency, and a head's global
            # average pool would then discard *where* in frequency a pattern sits, which is
            # what tells a tone, a vowel's formants or a speaker's pitch apart. Folding the
            # bands into channels keeps that position; pooling averages over time only.
            b, c, h, w = out.shape
            out = out.reshape(b, c * h, 1, w)
        return out


_CNN = set(CNNParams.model_fields)


@ENCODERS.register(
    "audio_cnn", params=AudioCNNParams, summary="audio: log-mel spectrogram + CNN (feature maps)"
)
def build_audio_cnn(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, AudioCNNParams)
    return AudioCNNEncoder(spec, params)


__all__ = [
    "AudioCNNEncoder",
    "AudioCNNParams",
    "LogMel",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "spec_augment",
]
