# CPU image of the forecast server: the package with its bundled model, running `tirex serve`.
#   docker build -t tirex-serve .
#   docker run -p 8000:8000 tirex-serve                       # add -e TIREX_API_KEY=... to require a key
#   docker run -p 8000:8000 tirex-serve --model NX-AI/TiRex   # options after the image name go to `tirex serve`
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# g++ builds the CPU kernel of the sLSTM recurrence (once per CPU model, cached)
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY tirex ./tirex
COPY eval ./eval
COPY pretraining ./pretraining
COPY cuda ./cuda
# the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build)
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install ".[serve]" -c constraints.txt

RUN useradd --create-home tirex
USER tirex
WORKDIR /home/tirex
# load the bundled model and build the kernel now, so the first request does not wait for it
RUN python -c "from tirex import load_model; load_model().forecast([[1.0] * 64], 1)"

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["tirex", "serve", "--host", "0.0.0.0", "--port", "8000"]
