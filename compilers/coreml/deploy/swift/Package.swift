// swift-tools-version:5.7
// @@TITLE@@
import PackageDescription

let package = Package(
    name: "Deploy",
    platforms: [.macOS(.v13)],
    targets: [.executableTarget(name: "deploy", path: "Sources/deploy")]
)
