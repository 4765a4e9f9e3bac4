# Images for docker-compose.yml: `--target sink` (no OpenCV, no ONNX Runtime) and `--target detector`.
# Mirrors scripts/provision.sh: Debian bookworm packages, ONNX Runtime 1.31.1 from its PyPI wheel.

FROM rust:1.95-bookworm AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopencv-dev clang libclang-dev pkg-config cmake \
      libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libcurl4-openssl-dev \
      python3-pip unzip \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 -d /tmp/ort onnxruntime==1.31.1 \
    && unzip -q -j /tmp/ort/onnxruntime-1.31.1-*.whl 'onnxruntime/capi/libonnxruntime.so.1.31.1' -d /usr/local/lib \
    && ln -s libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so.1 \
    && ln -s libonnxruntime.so.1 /usr/local/lib/libonnxruntime.so \
    && ldconfig && rm -rf /tmp/ort
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim AS sink
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libssl3 libsasl2-2 zlib1g libzstd1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sink /usr/local/bin/sink
USER 65534:65534
ENTRYPOINT ["sink"]
CMD ["run"]

FROM debian:bookworm-slim AS detector
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 libopencv-videoio406 \
      libssl3 libsasl2-2 zlib1g libzstd1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/lib/libonnxruntime.so.1.31.1 /usr/local/lib/
RUN ln -s libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so.1 && ldconfig
COPY --from=build /src/target/release/detector /usr/local/bin/detector
COPY models/ /models/
ENV DETECTOR_MODEL=/models/yolo11n-pose.onnx
USER 65534:65534
ENTRYPOINT ["detector"]
