# Sourced by readme_walkthrough.sh and readme_flows.sh: the README's inputs, written into directory $1 from the LFW
# root $2. Held-out (dev-fold) people enrol ONE image each (plus a corrupt file); claims use their second image.
write_readme_inputs() {
  local W="$1" LFW="$2"
  cat > "$W/new_people.csv" <<CSV
image_path,identity
$LFW/Ariel_Sharon/Ariel_Sharon_0001.jpg,Ariel_Sharon
$LFW/Bill_Clinton/Bill_Clinton_0001.jpg,Bill_Clinton
$LFW/Anthony_Hopkins/Anthony_Hopkins_0001.jpg,Anthony_Hopkins
$W/broken.jpg,Someone_Else
CSV
  echo "this is not a jpeg" > "$W/broken.jpg"
  cat > "$W/claims.csv" <<CSV
image_path,claimed_identity
$LFW/Ariel_Sharon/Ariel_Sharon_0002.jpg,Ariel_Sharon
$LFW/Bill_Clinton/Bill_Clinton_0002.jpg,Ariel_Sharon
$LFW/Anthony_Hopkins/Anthony_Hopkins_0002.jpg,Anthony_Hopkins
CSV
}
