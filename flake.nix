{
  description = "Kiln: an immutable machine-image builder";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "kiln";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
          src = pkgs.lib.cleanSource ./.;
          # Every dependency is pinned by the committed lock file.
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite starts daemons (sshd, later dockerd and QEMU); it runs in CI instead.
          doCheck = false;
          meta.mainProgram = "kiln";
        };
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.system}.default ];
          packages = [ pkgs.rustfmt pkgs.clippy pkgs.openssh pkgs.hyperfine ];
        };
      });
    };
}
