#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
Installs, upgrades or removes the estate agent (or the collector) as a Windows service.

.DESCRIPTION
Install (the default):
  1. stops and removes the service of an earlier installation, if there is one;
  2. copies estate-agent.exe (or estate-collector.exe) from -SourceDir to -InstallDir;
  3. creates -ConfigDir with an ACL that only SYSTEM and the Administrators can read (the
     config names password files and the agent's state lives there), and, when the config
     file does not exist yet, writes it from the example config (an existing config is never
     touched); a new collector config gets a private CA and a certificate from
     `estate-collector tls init` in ConfigDir\tls, whose ca.pem the agents need
     (-CollectorCaFile);
  4. runs `<exe> service install --config <absolute path>` and `<exe> service start`;
  5. for the collector, opens the firewall for the TCP ports it listens on (the agent never
     listens on a port, so it gets no rule).
Uninstall (-Uninstall): stops and removes the service, the firewall rules and the binaries;
the config and the data are kept unless -RemoveData is given.

The script stops at the first error: every cmdlet runs with ErrorAction Stop and every
estate command's exit code is checked.

.PARAMETER Component
What to install: Agent (the default, on every server) or Collector (on one machine).

.PARAMETER SourceDir
Folder holding the executable and the example configs (agent.windows-domain.example.toml,
collector.example.toml). Default: the folder this script is in.

.PARAMETER InstallDir
Where the executable is copied. Default: "$env:ProgramFiles\estate".

.PARAMETER ConfigDir
Where the config (agent.toml or collector.toml) and the collector's database live.
Default: "$env:ProgramData\estate". The agent keeps its state in "$env:ProgramData\estate-agent".

.PARAMETER ExampleConfig
The example config written to ConfigDir when no config exists there yet. Default:
agent.windows-domain.example.toml (Agent) or collector.example.toml (Collector) in SourceDir.

.PARAMETER CollectorUrl
Agent only, for a new config: the collector's gRPC URL written into its [collector] section,
for example https://estate.corp.example.com:9750. An existing config is not changed.

.PARAMETER CollectorCaFile
Agent only: the collector's CA certificate (ca.pem from `estate-collector tls init`), copied to
ConfigDir\ca.pem, which a new config names as collector.ca_file.

.PARAMETER CollectorHostNames
Collector only, for a new config: the names agents use for this machine, written into the
certificate that `estate-collector tls init` makes in ConfigDir\tls. Default: this computer's
DNS name and its short name.

.PARAMETER FirewallPorts
Collector only: the TCP ports opened for inbound traffic (default 9750, where agents report;
add 9751 when a Prometheus on another machine scrapes /metrics and http_listen is not loopback).

.PARAMETER NoFirewall
Collector only: open no firewall port (a firewall managed by group policy, say).

.PARAMETER Uninstall
Remove the service, the firewall rules and the binaries instead of installing.

.PARAMETER RemoveData
With -Uninstall: also delete the config, the collector's database and TLS folder (its CA), the
agent's CA copy and state folder
(its agent id: a reinstalled agent then counts as a new host), and ConfigDir once empty.

.EXAMPLE
.\install.ps1 -CollectorUrl https://estate.corp.example.com:9750 -CollectorCaFile .\ca.pem
Installs the agent from the folder of this script and starts it.

.EXAMPLE
.\install.ps1 -Component Collector -FirewallPorts 9750,9751
Installs the collector, opening ports 9750 and 9751 (Domain and Private profiles).

.EXAMPLE
.\install.ps1 -Uninstall
Removes the agent's service and binaries; keeps its config and state.
#>
[CmdletBinding()]
param(
    [ValidateSet('Agent', 'Collector')]
    [string] $Component = 'Agent',

    [string] $SourceDir = $PSScriptRoot,

    [string] $InstallDir = (Join-Path $env:ProgramFiles 'estate'),

    [string] $ConfigDir = (Join-Path $env:ProgramData 'estate'),

    [string] $ExampleConfig = '',

    [string] $CollectorUrl = '',

    [string] $CollectorCaFile = '',

    [string[]] $CollectorHostNames = @(),

    [ValidateRange(1, 65535)]
    [int[]] $FirewallPorts = @(9750),

    [switch] $NoFirewall,

    [switch] $Uninstall,

    [switch] $RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
# Inside functions $PSBoundParameters is the function's own: keep the script's.
$scriptParameters = $PSBoundParameters

$name = if ($Component -eq 'Agent') { 'estate-agent' } else { 'estate-collector' }
$exeName = "$name.exe"
$configName = if ($Component -eq 'Agent') { 'agent.toml' } else { 'collector.toml' }
# Rules are named after the component and port, so uninstall removes exactly these.
$firewallGroup = 'estate'

function Write-Step([string] $Message) {
    Write-Host "==> $Message"
}

# Runs an estate executable and fails on a non-zero exit code (ErrorActionPreference does not
# cover native programs in Windows PowerShell 5.1).
function Invoke-Estate([string] $Exe, [string[]] $Arguments) {
    Write-Host "    $Exe $($Arguments -join ' ')"
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "``$Exe $($Arguments -join ' ')`` failed with exit code $LASTEXITCODE"
    }
}

# Stops and removes the service of an installed executable. Either step may fail because the
# service is already stopped or not installed; that is the state wanted, so the exit codes are
# reported, not fatal.
function Remove-EstateService([string] $Exe) {
    if (-not (Test-Path -LiteralPath $Exe -PathType Leaf)) {
        return
    }
    foreach ($action in @('stop', 'uninstall')) {
        Write-Host "    $Exe service $action"
        & $Exe service $action
        if ($LASTEXITCODE -ne 0) {
            Write-Host "    (exit code $($LASTEXITCODE), taken as not running or not installed)"
        }
    }
}

function Remove-EstateFirewallRules {
    $rules = @(Get-NetFirewallRule -Group $firewallGroup -ErrorAction SilentlyContinue |
        Where-Object { $_.Name -like "$name-tcp-*" })
    foreach ($rule in $rules) {
        Write-Host "    removing firewall rule $($rule.Name)"
        Remove-NetFirewallRule -Name $rule.Name
    }
}

# Only SYSTEM (S-1-5-18), which runs the service, and the Administrators (S-1-5-32-544) may
# read or change the config folder; inheritance from ProgramData (where Users may read) is cut.
# SIDs, not names, so the script works on every display language.
function Set-RestrictedAcl([string] $Path) {
    $acl = New-Object System.Security.AccessControl.DirectorySecurity
    $acl.SetAccessRuleProtection($true, $false)
    $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    $propagate = [System.Security.AccessControl.PropagationFlags]::None
    foreach ($sid in @('S-1-5-18', 'S-1-5-32-544')) {
        $identity = New-Object System.Security.Principal.SecurityIdentifier($sid)
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule(
            $identity, 'FullControl', $inherit, $propagate, 'Allow')
        $acl.AddAccessRule($rule)
    }
    Set-Acl -LiteralPath $Path -AclObject $acl
}

# A TOML literal string ('...'): backslashes in Windows paths stay as they are.
function ConvertTo-TomlLiteral([string] $Value) {
    if ($Value.Contains("'") -or $Value.Contains("`n")) {
        throw "cannot write ``$Value`` as a TOML literal string (it contains a quote or a newline)"
    }
    return "'$Value'"
}

# Sets `key = value` in one [section] of a TOML text ('' for the top level, before any table),
# replacing the key's line when it is there and adding it right after the section header (or
# at the top) when it is not.
function Set-TomlKey([string[]] $Lines, [string] $Section, [string] $Key, [string] $Value) {
    $current = ''
    $headerIndex = -1
    for ($i = 0; $i -lt $Lines.Count; $i++) {
        $line = $Lines[$i].Trim()
        if ($line -match '^\[\[?([^\]]+)\]\]?$') {
            $current = $Matches[1].Trim()
            if ($current -eq $Section) { $headerIndex = $i }
            continue
        }
        if ($current -eq $Section -and $line -match "^$([regex]::Escape($Key))\s*=") {
            $Lines[$i] = "$Key = $Value"
            return , $Lines
        }
    }
    $entry = "$Key = $Value"
    if ($Section -eq '') {
        return , (@($entry) + $Lines)
    }
    if ($headerIndex -lt 0) {
        return , ($Lines + @('', "[$Section]", $entry))
    }
    # @() keeps one-line slices arrays, so + appends lines instead of joining strings.
    $before = @($Lines[0..$headerIndex])
    $after = if ($headerIndex + 1 -lt $Lines.Count) { @($Lines[($headerIndex + 1)..($Lines.Count - 1)]) } else { @() }
    return , ($before + @($entry) + $after)
}

function New-ConfigFromExample([string] $ConfigPath) {
    $example = $ExampleConfig
    if ($example -eq '') {
        $exampleName = if ($Component -eq 'Agent') { 'agent.windows-domain.example.toml' } else { 'collector.example.toml' }
        $example = Join-Path $SourceDir $exampleName
    }
    if (-not (Test-Path -LiteralPath $example -PathType Leaf)) {
        throw "no config at ``$ConfigPath`` and no example config at ``$example`` to start from (give -ExampleConfig)"
    }
    Write-Step "writing $ConfigPath from $example"
    $lines = [string[]](Get-Content -LiteralPath $example -Encoding UTF8)
    if ($Component -eq 'Collector') {
        # The example's paths and loopback listener are Linux-shaped: on Windows the database
        # and the TLS files live beside the config, and agents reach the collector from the
        # network.
        $database = ConvertTo-TomlLiteral (Join-Path $ConfigDir 'estate.db')
        $lines = Set-TomlKey $lines '' 'database' $database
        $lines = Set-TomlKey $lines '' 'grpc_listen' '"0.0.0.0:9750"'
        $tls = Join-Path $ConfigDir 'tls'
        $lines = Set-TomlKey $lines '' 'tls_cert_file' (ConvertTo-TomlLiteral (Join-Path $tls 'server.pem'))
        $lines = Set-TomlKey $lines '' 'tls_key_file' (ConvertTo-TomlLiteral (Join-Path $tls 'server.key'))
    } else {
        $state = ConvertTo-TomlLiteral (Join-Path $env:ProgramData 'estate-agent')
        $lines = Set-TomlKey $lines 'agent' 'state_dir' $state
        $lines = Set-TomlKey $lines 'collector' 'ca_file' (ConvertTo-TomlLiteral (Join-Path $ConfigDir 'ca.pem'))
        if ($CollectorUrl -ne '') {
            $lines = Set-TomlKey $lines 'collector' 'url' "`"$CollectorUrl`""
        }
    }
    # UTF-8 without a byte order mark: TOML parsers are not required to accept one.
    $utf8 = New-Object System.Text.UTF8Encoding($false)
    [System.IO.File]::WriteAllLines($ConfigPath, $lines, $utf8)
}

# A private CA and the collector's certificate for the names agents use, unless a certificate
# is already there (`tls init` never overwrites one).
function New-CollectorCertificate([string] $Exe) {
    $tls = Join-Path $ConfigDir 'tls'
    if (Test-Path -LiteralPath (Join-Path $tls 'server.pem') -PathType Leaf) {
        Write-Step "keeping the certificate in $tls"
        return
    }
    $names = $CollectorHostNames
    if ($names.Count -eq 0) {
        $names = @([System.Net.Dns]::GetHostEntry($env:COMPUTERNAME).HostName, $env:COMPUTERNAME) |
            Select-Object -Unique
    }
    Write-Step "making the collector's CA and certificate in $tls for $($names -join ', ')"
    $arguments = @('tls', 'init', '--dir', $tls)
    foreach ($hostName in $names) {
        $arguments += @('--host', $hostName)
    }
    Invoke-Estate $Exe $arguments
    Write-Step "agents need $tls\ca.pem (install.ps1 -CollectorCaFile)"
}

function Install-Estate {
    $source = Join-Path $SourceDir $exeName
    if (-not (Test-Path -LiteralPath $source -PathType Leaf)) {
        throw "no $exeName in ``$SourceDir`` (give -SourceDir)"
    }
    if ($Component -eq 'Agent' -and $scriptParameters.ContainsKey('FirewallPorts')) {
        throw '-FirewallPorts is for the collector: the agent never listens on a port'
    }
    if ($Component -eq 'Collector' -and ($CollectorUrl -ne '' -or $CollectorCaFile -ne '')) {
        throw '-CollectorUrl and -CollectorCaFile are for the agent'
    }
    if ($Component -eq 'Agent' -and $CollectorHostNames.Count -gt 0) {
        throw '-CollectorHostNames is for the collector'
    }
    if ($CollectorCaFile -ne '' -and -not (Test-Path -LiteralPath $CollectorCaFile -PathType Leaf)) {
        throw "no CA certificate at ``$CollectorCaFile``"
    }
    $installed = Join-Path $InstallDir $exeName

    Write-Step "removing the service of an earlier installation (if any)"
    Remove-EstateService $installed

    Write-Step "copying $exeName to $InstallDir"
    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
    Copy-Item -LiteralPath $source -Destination $installed -Force

    Write-Step "config folder $ConfigDir (SYSTEM and Administrators only)"
    New-Item -ItemType Directory -Force -Path $ConfigDir | Out-Null
    Set-RestrictedAcl $ConfigDir
    $configPath = Join-Path (Resolve-Path -LiteralPath $ConfigDir).ProviderPath $configName
    if (Test-Path -LiteralPath $configPath -PathType Leaf) {
        Write-Step "keeping the existing $configPath"
    } else {
        New-ConfigFromExample $configPath
        if ($Component -eq 'Collector') {
            New-CollectorCertificate $installed
        }
    }
    if ($CollectorCaFile -ne '') {
        Write-Step "copying the collector's CA $CollectorCaFile to $ConfigDir\ca.pem"
        Copy-Item -LiteralPath $CollectorCaFile -Destination (Join-Path $ConfigDir 'ca.pem') -Force
    }

    if ($Component -eq 'Agent') {
        # The agent id lives there: a copy of it makes a clone of this host.
        $state = Join-Path $env:ProgramData 'estate-agent'
        Write-Step "state folder $state (SYSTEM and Administrators only)"
        New-Item -ItemType Directory -Force -Path $state | Out-Null
        Set-RestrictedAcl $state
    }

    Write-Step "installing and starting the $name service"
    Invoke-Estate $installed @('service', 'install', '--config', $configPath)
    Invoke-Estate $installed @('service', 'start')

    if ($Component -eq 'Collector') {
        Remove-EstateFirewallRules
        if ($NoFirewall) {
            Write-Step 'no firewall rule (-NoFirewall)'
        } else {
            foreach ($port in $FirewallPorts) {
                Write-Step "firewall: inbound TCP $port to $exeName (Domain and Private profiles)"
                New-NetFirewallRule -Name "$name-tcp-$port" -DisplayName "estate collector (TCP $port)" `
                    -Group $firewallGroup -Direction Inbound -Action Allow -Protocol TCP `
                    -LocalPort $port -Program $installed -Profile @('Domain', 'Private') | Out-Null
            }
        }
    }

    Invoke-Estate $installed @('service', 'status')
    Write-Step "done: edit $configPath, then ``& '$installed' service stop`` and ``service start``"
}

function Uninstall-Estate {
    $installed = Join-Path $InstallDir $exeName
    Write-Step "stopping and removing the $name service"
    Remove-EstateService $installed
    if ($Component -eq 'Collector') {
        Write-Step 'removing the firewall rules'
        Remove-EstateFirewallRules
    }
    if (Test-Path -LiteralPath $installed -PathType Leaf) {
        Write-Step "removing $installed"
        Remove-Item -LiteralPath $installed -Force
    }
    if ((Test-Path -LiteralPath $InstallDir) -and -not (Get-ChildItem -LiteralPath $InstallDir -Force)) {
        Remove-Item -LiteralPath $InstallDir -Force
    }
    if ($RemoveData) {
        $configPath = Join-Path $ConfigDir $configName
        Write-Step "removing $configPath"
        Remove-Item -LiteralPath $configPath -Force -ErrorAction SilentlyContinue
        if ($Component -eq 'Agent') {
            Remove-Item -LiteralPath (Join-Path $ConfigDir 'ca.pem') -Force -ErrorAction SilentlyContinue
            $state = Join-Path $env:ProgramData 'estate-agent'
            Write-Step "removing the agent's state $state"
            Remove-Item -LiteralPath $state -Recurse -Force -ErrorAction SilentlyContinue
        } else {
            foreach ($file in @('estate.db', 'estate.db-wal', 'estate.db-shm')) {
                Remove-Item -LiteralPath (Join-Path $ConfigDir $file) -Force -ErrorAction SilentlyContinue
            }
            Write-Step "removing the collector's CA and certificate $(Join-Path $ConfigDir 'tls')"
            Remove-Item -LiteralPath (Join-Path $ConfigDir 'tls') -Recurse -Force -ErrorAction SilentlyContinue
        }
        if ((Test-Path -LiteralPath $ConfigDir) -and -not (Get-ChildItem -LiteralPath $ConfigDir -Force)) {
            Remove-Item -LiteralPath $ConfigDir -Force
        }
    } else {
        Write-Step "kept $ConfigDir (give -RemoveData to delete the config and data)"
    }
}

if ($RemoveData -and -not $Uninstall) {
    throw '-RemoveData goes with -Uninstall'
}
if ($Uninstall) {
    Uninstall-Estate
} else {
    Install-Estate
}
